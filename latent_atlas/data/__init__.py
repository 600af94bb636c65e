"""From files to activation chunks: text corpora and their manifests, the language models that read
them, dense activation chunks on disk, the whitening fitted over them, and the atomic writes and
paths everything else stores through. May import `compute` only.
"""
