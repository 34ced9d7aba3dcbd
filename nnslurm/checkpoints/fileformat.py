"""What nnslurm adds to nnU-Net's checkpoint files: the "nnslurm" entry and its weights checksum.

Files keep nnU-Net's names and keys (so `nnUNetv2_train --c` and `nnUNetv2_predict` load them)
and carry one extra key, META_KEY, with the exact position (epoch, iteration), the RNG states,
the partial epoch's outputs, the run's identity and a CRC32 of the weights (torch's zip reader
checks no CRC). The entry's "format" says how that CRC is defined; the writer and the reader
both take the definition from here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import torch

from nnslurm.checkpoints.host_copies import storage_bytes

META_KEY = "nnslurm"
# 2: weights_crc32 over each distinct storage once (weights_checksum);
# 1: over every key's bytes, shared bytes again for each key (legacy_weights_checksum).
FORMAT_VERSION = 2
LEGACY_FORMAT = 1  # also files without a "format" field


def weights_checksum(weights: Mapping[str, torch.Tensor]) -> int:
    """Format 2: CRC32 of the weights as torch.save stores them, each distinct storage read once.

    First a header with one line per key, in key order (name, dtype, shape, stride, offset and
    which storage), then the bytes of every distinct non-empty storage, in the order the sorted
    keys first use them. nnU-Net's state_dict names each encoder weight up to four times; its
    bytes are read once, as torch.save writes them once.
    """
    header, storages = _layout(weights)
    crc = zlib.crc32(header)
    for storage in storages:
        crc = zlib.crc32(storage_bytes(storage).numpy().data, crc)
    return crc


def _layout(weights: Mapping[str, torch.Tensor]) -> tuple[bytes, list[torch.UntypedStorage]]:
    """The header and the distinct non-empty CPU storages, in first-use order."""
    index_of: dict[tuple[int, int, str], int] = {}
    storages: list[torch.UntypedStorage] = []
    lines = []
    for key in sorted(weights):
        tensor = weights[key].detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        storage = tensor.untyped_storage()
        index = -1  # an empty storage has no bytes to read
        if storage.nbytes():
            identity = (storage.data_ptr(), storage.nbytes(), str(storage.device))
            if identity not in index_of:
                index_of[identity] = len(storages)
                storages.append(storage if storage.device.type == "cpu" else storage.cpu())
            index = index_of[identity]
        lines.append(
            f"{key}\t{tensor.dtype}\t{tuple(tensor.shape)}\t{tensor.stride()}\t"
            f"{tensor.storage_offset()}\t{index}\n"
        )
    return "".join(lines).encode(), storages


def legacy_weights_checksum(weights: Mapping[str, torch.Tensor]) -> int:
    """Format 1 (files of nnslurm 0.1): CRC32 over every key's name and bytes, in key order.

    Bytes that several keys share are read again for each of them.
    """
    crc = 0
    for key in sorted(weights):
        data = weights[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        crc = zlib.crc32(key.encode(), crc)
        if data.numel():
            crc = zlib.crc32(data.numpy().data, crc)
    return crc


CHECKSUMS: dict[int, Callable[[Mapping[str, torch.Tensor]], int]] = {
    LEGACY_FORMAT: legacy_weights_checksum,
    FORMAT_VERSION: weights_checksum,
}
