"""Datasets: reading LLaVA / Video-LLaVA conversation files and Video-ChatGPT QA files."""

from vlm_cli.data.records import MediaRef, Record, load_records, unique_media

__all__ = ["MediaRef", "Record", "load_records", "unique_media"]
