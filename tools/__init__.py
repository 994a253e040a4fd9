"""famstream's tools: setup, references, goldens, data, the FAM trainer, benchmarks (never the
product path). The index of scripts is tools/README.md; what they share is tools/common.py."""
