"""What every benchmark script shares: the FLOP model (`flops`), the random-weight models and
their inputs (`models`), timed runs and the per-stage timer (`timing`), the memory probe
(`memory`) and the table printer and JSON writer (`report`). A script asks one question and
answers it with these; no script imports another."""
