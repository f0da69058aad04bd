"""The project's own small Qwen2.5-VL-architecture model: builders and media generators."""
