"""Merge a LoRA adapter into BF16 safetensors and weld the base MTP head back on."""
