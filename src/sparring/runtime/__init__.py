"""Run-time infrastructure every domain shares: checkpoints (``checkpoint``), resumable evaluation state
(``eval_state``), run folders and their locks (``run_folder``), experiment trackers (``trackers``) and
``torch.compile`` (``compile``). Nothing here knows a method or a domain."""
