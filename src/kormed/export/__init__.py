"""`kormed export`: what leaves a run, apart from training.

- `merge`: an adapter merged into its base (the adapter checked against the base first);
- `gguf`: GGUF files through llama.cpp's converter;
- `model_card`: the README.md model card of an adapter, a merged model or a GGUF export;
- `run`: one export (merge and/or GGUF, with its card); `command`: the `kormed export` command.
"""
