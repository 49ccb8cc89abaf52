"""Checkpoint files: reading any supported format without running code from it (`loading`),
deciding where a checkpoint lies and in which format (`layout`), the Hugging Face CLIP layout and
its key tables (`hf`, `hf_export`), and the files' content hashes (`hashing`)."""
