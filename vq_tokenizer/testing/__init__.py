"""Test helpers. `hub_server.HubServer` is a local Hub-compatible server for the real huggingface_hub client.

Nothing here imports torch: import `vq_tokenizer.testing.hub_server` directly.
"""
