"""The project's own reference model: how it is built (`builders`) and trained (`train`), and the
shipped weights in `reference/model/` (see MODEL_CARD.md)."""
