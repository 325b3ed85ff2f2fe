"""seq2seq: a Seq2Seq LSTM with additive attention, trained on synthetic tasks by a DVC + MLflow pipeline."""

__version__ = "0.1.0"
