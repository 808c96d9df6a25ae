"""Data in: corpora (built-in and the user's own), token windows, sampling with a seed."""

from lowbit.calib.corpus import Corpus, load_corpus
from lowbit.calib.sample import sample_texts, token_windows

__all__ = ["Corpus", "load_corpus", "sample_texts", "token_windows"]
