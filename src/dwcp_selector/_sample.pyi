from array import array

from ._types import BytesLike

def set_clog(table: BytesLike, /) -> None: ...
def sample_stats(data: BytesLike, /) -> tuple[float, float, float]: ...
def same_pages(data: BytesLike, base: BytesLike, count: int, /) -> tuple[int, int]: ...
def light_row(
    out: array[float] | bytearray | memoryview,
    data: BytesLike,
    base: BytesLike | None,
    type_index: int,
    n_types: int,
    prev_zstd: float | None,
    prev_lz4: float | None,
    prev_hde: float | None,
    capacity_bps: float,
    utilization: float,
    rtt_s: float,
    jitter_s: float,
    loss: float,
    free_cores: float,
    active_transfers: float,
    link_index: int,
    n_links: int,
    window_cap_bytes: float,
    mss_bytes: float,
    max_streams: int,
    chunk_size: int,
    /,
) -> tuple[float, float, float, float | None, int]: ...
