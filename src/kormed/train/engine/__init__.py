"""The engine under the three recipes (cpt, sft, loop): what every training run shares.

- `model_setup`: load or continue the model, grow embeddings, PEFT LoRA and which embedding rows train;
- `trainer`: the HF Trainer subclass, the collator, build_trainer and run_training;
- `callbacks`: non-finite guard, interrupt-and-checkpoint, early stopping, tokens/s;
- `checkpoints`: complete/good checkpoints, the --resume plan, data-order and model-shape record;
- `stopping`: why a run stopped (StopRecord), the SIGINT/SIGTERM flag;
- `processes`: which process this is, how many train together;
- `outputs`: the adapter, training_info.json, training_curves.png.
"""
