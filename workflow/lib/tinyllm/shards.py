"""TinyStories shards: extract one from the archive, read its stories, write tiny.txt, pretokenize it.

Pretokenized shards (`data{NN}.bin`) are flat uint16 little-endian token ids: every story encoded with BOS in
front and no EOS, concatenated (llama2.c's layout). `data00.bin` is the validation split, the rest train
(tinyllm.batches reads them).

Every file is written through tinyllm.files.atomic_output, so a crash never leaves a truncated output behind.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tinyllm.errors import DataError
from tinyllm.files import atomic_output
from tinyllm.tokenizer import Tokenizer

ARCHIVE_SHARD_NAME = "data{:02d}.json"
UINT16_VOCAB_LIMIT = 1 << 16


# --- extract -----------------------------------------------------------------------------------------------


def shard_file_name(shard: int | str) -> str:
    """ "data07.json" for shard 7 or "07"."""
    return ARCHIVE_SHARD_NAME.format(int(shard))


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("\\") or (len(member.name) > 1 and member.name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "path leads outside the archive's folder"
    if member.issym() or member.islnk():
        return f"a link to {member.linkname!r}"
    if member.isdev():
        return "a device or FIFO"
    if not member.isfile():
        return "not a regular file"
    return None


def extract_shard(archive: str | os.PathLike, member_name: str, output: str | os.PathLike) -> Path:
    """Copy one shard file (e.g. "data07.json") out of the gzip tar archive into output, atomically.

    The member must sit at the archive's root (as upstream) or under a single top folder. Only that member's
    bytes are read and they go to output alone, never to a path the archive names; a requested member that is
    a link, device, absolute path or `..` path is refused with DataError, as is a missing one, and so is an
    archive that ends early or is corrupt before the shard is whole (output is then left as it was).
    """
    archive, output = Path(archive), Path(output)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # streams: stops at the shard rather than reading the whole archive
                if PurePosixPath(member.name).name != member_name:
                    continue
                problem = _unsafe_reason(member)
                if problem:
                    raise DataError(f"{archive}: refusing member {member.name!r}: {problem}")
                depth = len([p for p in PurePosixPath(member.name).parts if p != "."])
                if depth > 2:
                    continue
                with atomic_output(output) as out:
                    shutil.copyfileobj(tar.extractfile(member), out, 1 << 20)
                    if out.tell() != member.size:
                        raise DataError(f"{archive}: member {member.name!r} is truncated")
                return output
    except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError) as err:  # reading errors, not writing
        raise DataError(
            f"{archive}: cannot extract {member_name}: the archive is truncated or corrupt "
            f"({type(err).__name__}: {err}); delete it and download it again"
        ) from None
    raise DataError(f"{archive}: no shard {member_name} at the archive's root")


# --- stories, tiny.txt, pretokenize ------------------------------------------------------------------------


def load_stories(shard_json: str | os.PathLike) -> list[str]:
    """The stories of a TinyStories shard, each stripped of surrounding whitespace (as llama2.c does).

    A story that is empty or only whitespace is an error rather than skipped: it would train on bare BOS
    tokens, and a shard of them means the data is not what it should be.
    """
    path = Path(shard_json)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not isinstance(entries, list):
        raise DataError(
            f'{path}: expected a JSON array of {{"story": ...}} objects, found a {type(entries).__name__}'
        )
    stories = []
    for index, entry in enumerate(entries):
        story = entry.get("story") if isinstance(entry, dict) else None
        if not isinstance(story, str):
            if not isinstance(entry, dict):
                problem = f"is a {type(entry).__name__}, not an object"
            elif "story" not in entry:
                problem = 'has no "story"'
            else:
                problem = f'has a "story" that is a {type(story).__name__}, not a string'
            raise DataError(f"{path}: entry {index} {problem}")
        stripped = story.strip()
        if not stripped:
            kind = "only whitespace" if story else "empty"
            raise DataError(f'{path}: entry {index} has a "story" that is {kind}')
        stories.append(stripped)
    if not stories:
        raise DataError(f"{path}: no stories (an empty JSON array)")
    return stories


def write_tiny_txt(shard_jsons: Sequence[str | os.PathLike], output: str | os.PathLike) -> int:
    """Write the tokenizer's training text: every story of the shards, stripped, then a newline.

    As llama2.c's train_vocab: newlines inside a story stay, so SentencePiece sees each paragraph as a line.
    Returns the number of stories written.
    """
    count = 0
    with atomic_output(output, "w", encoding="utf-8", newline="\n") as out:
        for shard in shard_jsons:
            for story in load_stories(shard):
                out.write(story + "\n")
                count += 1
    return count


def pretokenize_shard(
    shard_json: str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    output: str | os.PathLike,
    num_threads: int = 1,
) -> int:
    """Encode every story of a shard (stripped, BOS first, no EOS), concatenate, write uint16 LE to output.

    Returns the number of tokens written. A vocabulary too large for uint16 ids is refused.
    """
    tokenizer = Tokenizer(tokenizer_model)
    if tokenizer.n_words > UINT16_VOCAB_LIMIT:
        raise ValueError(
            f"{tokenizer_model}: a vocabulary of {tokenizer.n_words} tokens does not fit uint16 ids "
            f"(at most {UINT16_VOCAB_LIMIT})"
        )
    stories = load_stories(shard_json)
    ids = tokenizer.encode_concat(stories, bos=True, eos=False, num_threads=num_threads)
    with atomic_output(output) as out:
        out.write(ids.astype("<u2").tobytes())
    return len(ids)
