"""Layer types that are not exported, and why (`python -m caffe_torch.export --list-types` prints the table)."""

from .registry import refuse

_LOSS = ("a training loss (it needs labels and gives the training objective); a deployed net has none: pick the "
         "blobs to export with --output")
for _type in ("SoftmaxWithLoss", "EuclideanLoss", "ContrastiveLoss", "HingeLoss", "MultinomialLogisticLoss",
              "InfogainLoss", "SigmoidCrossEntropyLoss"):
    refuse(_type, _LOSS)

refuse("Accuracy", "an evaluation metric over labels: compute it from the exported scores; pick the blobs to "
       "export with --output")
refuse("Python", "a Python layer runs the user's own NumPy code, which has no ONNX form")
refuse("HDF5Output", "it writes HDF5 files as a side effect; pick the blobs to export with --output")
for _type in ("RNN", "LSTM", "LSTMUnit"):
    refuse(_type, "recurrent layers (Caffe's unrolled nets with their sequence-continuation input) are not "
           "implemented by this exporter")
