"""Python names for the enums in bpf/ovltrace.h (tests/test_counters.py
checks both agree; the per-overlay counters are in counters.py)."""
DC_PAGES, DC_SYNC, DC_DATASYNC, DC_TIME = range(4)
ROLE_NONE, ROLE_UPPER, ROLE_WORK, ROLE_FS, ROLE_ORPHAN = range(5)
ORPHAN_SLOT = 0xFFFFFFFF
FLUSH_SYNCFS, FLUSH_SYNC, FLUSH_UMOUNT = 1, 2, 3
FLUSH_KINDS = {FLUSH_SYNCFS: "syncfs", FLUSH_SYNC: "sync", FLUSH_UMOUNT: "umount"}
EV_FLUSH, EV_WB_ERROR, EV_ERR_RETURNED, EV_FLUSH_DONE, EV_MOUNT = 1, 2, 3, 4, 5
MK_MOUNT, MK_FS_UPPER, MK_FS_WORK, MK_FS_CREATE, MK_FSMOUNT, MK_MOVE_MOUNT = range(1, 7)
CFG_EPOCH, CFG_FN_COPY_UP, CFG_SETTLED, CFG_DIR_CACHE = 0, 1, 2, 3
KS_MOUNT_SEQ, KS_MOUNTS_INFLIGHT, KS_RENAME_SEQ = 0, 1, 2
RET_KINDS = {1: "syncfs", 2: "fsync", 3: "fdatasync"}
HEALTH_COUNTERS = ["events_dropped", "cache_misses", "walk_too_deep",
            "walk_no_dentry", "map_full", "flush_works", "folio_bytes_unmatched", "error_events_dropped",
            "mount_events_dropped", "orphans_full", "dir_cache_hits"]
