"""Python names for the enums in bpf/ovltrace.h (keep both in step)."""
DC_PAGES, DC_SYNC, DC_DATASYNC, DC_TIME = range(4)
ROLE_NONE, ROLE_UPPER, ROLE_WORK, ROLE_FS = range(4)
FLUSH_SYNCFS, FLUSH_SYNC, FLUSH_UMOUNT = 1, 2, 3
FLUSH_KINDS = {FLUSH_SYNCFS: "syncfs", FLUSH_SYNC: "sync", FLUSH_UMOUNT: "umount"}
EV_FLUSH, EV_WB_ERROR, EV_ERR_RETURNED = 1, 2, 3
RET_KINDS = {1: "syncfs", 2: "fsync", 3: "fdatasync"}
COUNTERS = ["events_dropped", "cache_misses", "walk_too_deep",
            "walk_no_dentry", "map_full", "flush_works", "folio_bytes_unmatched"]
STAT_FIELDS = ["inodes_dirtied", "bytes_dirtied", "bytes_written_back", "copy_ups",
               "copy_up_bytes", "wb_errors", "fsync_calls", "syncfs_calls", "errors_returned"]
