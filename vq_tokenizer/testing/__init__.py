"""Test helpers. `hub_server.HubServer` is a local Hub-compatible server for the real huggingface_hub client.

`hub_server.py` uses the standard library only (no torch); importing it still runs `vq_tokenizer/__init__.py`.
"""
