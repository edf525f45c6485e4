"""RLlib's offline methods (`rllib_bc`, `rllib_marwil`) as external methods of the platform.

RLlib runs its own training loop on the platform's data (`data.rllib_rows`, read through Ray
Data) and writes its own checkpoint; `methods` starts it, logs it and wraps the restored policy
into the platform's acting interface.
"""
