"""The fault suite: every fault a user can make ends in one line that names the file, the line or the key,
and loses nothing already produced.

One module per area (config, download, data, training, outputs, models, logs); each test gives the fault, the
one line expected (exact, or its parts that name the file, the line or the key) and the proof that the
earlier outputs and the training state are intact. Disk cases run on real filesystems (a small tmpfs, a
read-only bind mount: root only, skipped elsewhere), signal cases on real processes. README.md's "What
happens when" table lists the faults a user meets first; its "Training on your own text" table the data
faults.
"""
