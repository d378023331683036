"""Coverage-guided fuzzing (atheris) of everything that reads untrusted bytes.

One module per target; each exposes ``check(data: bytes) -> None``, which
returns for every outcome the product documents and raises for anything else
(a crash). ``scripts/fuzz`` drives a target under atheris; ``test_seeds.py``
replays every seed, crashers found earlier included, through the same function.
"""
