"""VoxCeleb1 data for the reproduction: lists, audio, crops, the paper's spectrogram, loaders, and a
synthetic corpus in VoxCeleb1's layout. Knows nothing of Caffe. torch is imported only where needed."""

from .audio import SAMPLE_RATE, AudioError, read_wav, wav_info, write_wav
from .cache import WavCache, build_cache
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
from .scan import ScanResult, scan_audio
from .synth import make_corpus

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "CropError",
    "EvalCrops",
    "ListFormatError",
    "ScanResult",
    "Splits",
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
    "load_labels",
    "make_corpus",
    "num_frames",
    "parse_iden_split",
    "random_crop",
    "read_iden_split",
    "read_meta",
    "read_trials",
    "read_wav",
    "save_labels",
    "scan_audio",
    "spectrogram",
    "spectrogram_torch",
    "train_loader",
    "wav_info",
    "write_wav",
]
