"""Python names for the enums in bpf/ovltrace.h (keep both in step)."""
DC_PAGES, DC_SYNC, DC_DATASYNC, DC_TIME = range(4)
ROLE_NONE, ROLE_UPPER, ROLE_WORK, ROLE_FS = range(4)
FLUSH_SYNCFS, FLUSH_SYNC, FLUSH_UMOUNT = 1, 2, 3
FLUSH_KINDS = {FLUSH_SYNCFS: "syncfs", FLUSH_SYNC: "sync", FLUSH_UMOUNT: "umount"}
EV_FLUSH, EV_WB_ERROR, EV_ERR_RETURNED, EV_FLUSH_DONE = 1, 2, 3, 4
CFG_EPOCH, CFG_FN_COPY_UP = 0, 1
COPYUP_LAT_SLOTS = 16
RET_KINDS = {1: "syncfs", 2: "fsync", 3: "fdatasync"}
COUNTERS = ["events_dropped", "cache_misses", "walk_too_deep",
            "walk_no_dentry", "map_full", "flush_works", "folio_bytes_unmatched", "error_events_dropped"]
STAT_FIELDS = ["inodes_dirtied", "bytes_dirtied", "bytes_written_back", "copy_ups",
               "copy_up_bytes", "writeback_errors", "fsync_calls", "syncfs_calls", "errors_returned",
               # function hooks only
               "copy_ups_metadata_only", "copy_up_failures", "copy_up_ns", "sb_errseq_advances"]
