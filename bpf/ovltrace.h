/* Structs that both the BPF programs and Python read.
 * Python mirrors every one of them in ovltrace/bpfdefs.py: change both.
 * struct ovl_stats members carry the names of the Python model's counters. */
#ifndef OVLTRACE_H
#define OVLTRACE_H

#define OVL_MAX_DEPTH 48      /* dentry levels walked to find an upper/work dir */
#define COMM_LEN 16
#define PATH_LEN 128

enum dirty_class { DC_PAGES, DC_SYNC, DC_DATASYNC, DC_TIME, DC_NR };
enum role { ROLE_NONE = 0, ROLE_UPPER = 1, ROLE_WORK = 2, ROLE_FS = 3,
	     ROLE_ORPHAN = 4 /* under no known overlay while a mount is unsettled */ };
enum flush_kind { FLUSH_SYNCFS = 1, FLUSH_SYNC = 2, FLUSH_UMOUNT = 3 };
enum event_type { EV_FLUSH = 1, EV_WB_ERROR = 2, EV_ERR_RETURNED = 3,
		  EV_FLUSH_DONE = 4 /* umount: its sync_filesystem returned */,
		  EV_MOUNT = 5 /* struct mount_event */ };

/* config[] indexes */
enum config_idx { CFG_EPOCH = 0, CFG_FN_COPY_UP = 1 /* copy_up not on the workdir estimate */,
		  CFG_SETTLED = 2 /* every overlay mount up to this seq is known to userspace */,
		  CFG_DIR_CACHE = 3 /* the renames hook is attached: directory answers may be cached */,
		  CFG_NR = 4 };
/* kstate[] indexes: written by the kernel side only */
enum kstate_idx { KS_MOUNT_SEQ = 0 /* overlay mounts begun */, KS_MOUNTS_INFLIGHT = 1,
		  KS_RENAME_SEQ = 2 /* rename syscalls that succeeded */, KS_NR = 4 };

#define COPYUP_LAT_SLOTS 16   /* log2(microseconds) buckets of copy-up latency */
enum ret_kind { RK_SYNCFS = 1, RK_FSYNC = 2, RK_FDATASYNC = 3 };

/* counters[] indexes: the tool's own health, exported as self-metrics */
enum counter {
	CNT_EVENTS_DROPPED, CNT_CACHE_MISS, CNT_WALK_TOO_DEEP,
	CNT_WALK_NO_DENTRY, CNT_MAP_FULL, CNT_FLUSH_WORKS, CNT_FOLIO_UNMATCHED,
	CNT_ERROR_EVENTS_DROPPED, CNT_MOUNT_EVENTS_DROPPED, CNT_ORPHANS_FULL,
	CNT_DIR_CACHE_HITS /* misses answered by a directory's cached owner */, CNT_NR = 16
};

/* Each overlay, and the rest of each upper fs, owns a slot.  A slot is
 * reused after its overlay goes away, so references carry the slot's
 * generation and are void when it no longer matches slot_gen[slot]. */
struct slot_ref { u32 slot; u32 gen; };

struct dir_key { u32 dev; u32 pad; u64 ino; };
struct dir_val { u32 slot; u32 gen; u32 role; u32 pad; };

struct ovl_stats {              /* per slot, per CPU */
	u64 dirty_calls[DC_NR];     /* __mark_inode_dirty calls by flag class */
	u64 inodes_dirtied;         /* clean -> dirty transitions */
	u64 bytes_dirtied;          /* sizes of folios newly dirtied */
	u64 bytes_written_back;     /* pages written back x page size */
	u64 copy_ups;               /* copy-ups (tracepoint path: temp files in workdir) */
	u64 copy_up_bytes;
	u64 writeback_errors;       /* writeback errors on this slot's inodes */
	u64 fsync_calls;            /* fsync + fdatasync on files of this overlay */
	u64 syncfs_calls;           /* syncfs on this overlay */
	u64 errors_returned;        /* syncfs/fsync/fdatasync that returned < 0 here */
	/* function hooks only (zero on the tracepoint path) */
	u64 copy_ups_metadata_only; /* metadata-only copy-ups (metacopy=on) */
	u64 copy_up_failures;       /* ovl_copy_up_flags returned < 0 */
	u64 copy_up_ns;             /* total time in copy-ups that copied */
	u64 copy_up_latency[COPYUP_LAT_SLOTS];  /* [i]: 2^i <= us < 2^(i+1); [0]: < 2 us; last: all above */
	u64 sb_errseq_advances;     /* upper fs slot: syncs during which s_wb_err moved */
};

/* Orphans: upper-fs inodes dirtied under no known overlay while some overlay
 * mount is not yet known to userspace (kstate[KS_MOUNT_SEQ] !=
 * config[CFG_SETTLED]).  Each keeps its own counters and the directory
 * inode numbers above it, so userspace can charge it to the overlay whose
 * upperdir or workdir is among them once it learns of that mount, even one
 * that is gone by then.  References to it carry slot ORPHAN_SLOT and the
 * orphan's id as gen. */
#define ORPHAN_SLOT 0xffffffffU
#define ORPHAN_ANC 16             /* power of 2: ancestors kept, nearest the fs root */
struct orphan_key { u64 inode; u64 ino; };
struct orphan_val {
	u32 id;
	u32 dev;                     /* upper fs s_dev */
	u32 seq;                     /* kstate[KS_MOUNT_SEQ] when it was made */
	u32 levels;                  /* levels walked, the inode itself to the root */
	u64 first_ns;
	u64 anc[ORPHAN_ANC];         /* inode number of level i at anc[i % ORPHAN_ANC] */
	struct ovl_stats s;
};

/* An overlay mount seen in the kernel (mount(2), or the fsopen/fsconfig/
 * fsmount/move_mount steps of the new API).  Sent with only the bytes of
 * data[] that were read. */
enum mount_kind { MK_MOUNT = 1 /* data: the options */, MK_FS_UPPER = 2 /* data: upperdir */,
		  MK_FS_WORK = 3 /* data: workdir */, MK_FS_CREATE = 4, MK_FSMOUNT = 5 /* ret: mount fd */,
		  MK_MOVE_MOUNT = 6 /* dir: where */ };
#define MOUNT_DATA_LEN 4096       /* mount(2) copies at most a page of options */
struct mount_event {
	u32 type;                    /* EV_MOUNT */
	u32 kind;
	u32 pid;
	u32 tid;
	u32 seq;                     /* MK_MOUNT, MK_FS_CREATE: kstate[KS_MOUNT_SEQ] it took */
	s32 ret;
	s32 fd;                      /* new API: the fs context (or mount) fd */
	u32 len;                     /* bytes of data[] sent */
	u64 ts_ns;                   /* syscall entry */
	u64 end_ns;                  /* syscall exit */
	u64 cgroup_id;
	char comm[COMM_LEN];
	char dir[PATH_LEN * 2];
	char data[MOUNT_DATA_LEN];
};

struct dirty_val { u32 slot; u32 gen; u64 since_ns; u64 ino; };

struct flush_state {            /* a flush in progress, per calling thread */
	u64 id;
	u64 start_ns;
	u64 exit_ns;                /* syscall exit; 0 while inside it */
	u64 last_ns;                /* last writeback work queued/finished for it */
	u64 cgroup_id;
	u32 kind;
	u32 target_dev;             /* s_dev of the fd's sb (syncfs); 0: all */
	u32 pid;
	u32 tid;
	u32 synced_dev;             /* sync_filesystem: the upper sb it synced */
	u32 sb_errseq0;             /* its s_wb_err when that sync began */
	u32 sb_errseq;              /* ... and when it returned */
	u32 sb_err_advanced;        /* the sb-level errseq moved during the flush */
	char comm[COMM_LEN];
	char path[PATH_LEN];        /* umount: the path argument */
};

struct victim_key { u64 flush_id; u32 slot; u32 gen; };

struct event {
	u32 type;
	u32 kind;                   /* flush_kind or ret_kind */
	u32 pid;
	u32 tid;
	u32 slot;
	u32 gen;
	u32 dev;
	s32 err;
	u64 ts_ns;
	u64 end_ns;
	u64 ino;
	u64 flush_id;
	u64 cgroup_id;
	u32 synced_dev;             /* EV_FLUSH*: upper sb synced (function hook) */
	u32 sb_errseq;
	u32 sb_err_advanced;
	u32 pad;
	char comm[COMM_LEN];
	char path[PATH_LEN];
};

/* ---- filling an event ------------------------------------------------------
 * Every emit site reserves, calls one of these, sets what is its own and
 * submits.  Zeroed first: ring-buffer memory is not, and it reaches
 * userspace. */

/* stamped with the current task, now */
static __always_inline void event_init(struct event *e, u32 type)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	u64 id = bpf_get_current_pid_tgid();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

/* a flush's events: its caller and start as recorded when it began */
static __always_inline void event_init_flush(struct event *e, u32 type,
                                             struct flush_state *st)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->kind = st->kind;
	e->pid = st->pid;
	e->tid = st->tid;
	e->ts_ns = st->start_ns;
	e->flush_id = st->id;
	e->cgroup_id = st->cgroup_id;
	e->synced_dev = st->synced_dev;
	e->sb_errseq = st->sb_errseq;
	e->sb_err_advanced = st->sb_err_advanced;
	__builtin_memcpy(e->comm, st->comm, COMM_LEN);
	__builtin_memcpy(e->path, st->path, PATH_LEN);
}

/* a mount event, stamped with the current task, now; data[] is not zeroed:
 * only the bytes read into it are sent */
static __always_inline void mount_event_init(struct mount_event *e, u32 kind, s32 fd)
{
	__builtin_memset(e, 0, __builtin_offsetof(struct mount_event, data));
	e->type = EV_MOUNT;
	e->kind = kind;
	e->fd = fd;
	u64 id = bpf_get_current_pid_tgid();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->ts_ns = e->end_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

#endif
