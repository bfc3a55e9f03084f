"""VoxCeleb data for the reproduction: lists, audio (wav; VoxCeleb2's m4a), crops, the paper's spectrogram,
loaders, noise/reverberation augmentation, the audio cache, and synthetic corpora in VoxCeleb1's and VoxCeleb2's
layouts. Knows nothing of Caffe. torch is imported only where needed."""

from .audio import SAMPLE_RATE, AudioError, read_wav, wav_info, write_wav
from .augment import AugmentConfig, Augmenter, load_augmenter
from .cache import CacheError, StaleCacheError, WavCache, build_cache
from .crops import CropError, apply_crop, crop_params, random_crop
from .frontend import crop_length, num_frames, spectrogram, spectrogram_torch
from .lists import (
    ListFormatError,
    Splits,
    Trials,
    UttSet,
    load_labels,
    parse_iden_split,
    read_iden_split,
    read_meta,
    read_trials,
    save_labels,
)
from .loader import EvalCrops, TrainBatches, batch_rng, eval_crops, train_loader
from .roots import read_train_list, training_splits
from .scan import ScanResult, scan_audio
from .synth import make_corpus

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "AugmentConfig",
    "Augmenter",
    "CacheError",
    "CropError",
    "EvalCrops",
    "ListFormatError",
    "ScanResult",
    "Splits",
    "StaleCacheError",
    "TrainBatches",
    "Trials",
    "UttSet",
    "WavCache",
    "apply_crop",
    "batch_rng",
    "build_cache",
    "crop_length",
    "crop_params",
    "eval_crops",
    "load_augmenter",
    "load_labels",
    "make_corpus",
    "num_frames",
    "parse_iden_split",
    "random_crop",
    "read_iden_split",
    "read_meta",
    "read_train_list",
    "read_trials",
    "read_wav",
    "save_labels",
    "scan_audio",
    "spectrogram",
    "spectrogram_torch",
    "train_loader",
    "training_splits",
    "wav_info",
    "write_wav",
]
