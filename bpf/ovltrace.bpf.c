/* ovltrace: attribute upper-filesystem dirtying, writeback, flushes and
 * writeback errors to overlay mounts, in the kernel.
 *
 * Built by bcc against a header tree that ovltrace assembles at run time
 * (no kernel headers needed).  kernel_layout.h, generated from BTF, gives
 * OFF_x/SZ_x for every kernel struct member read here, the kernel's flag
 * values, and HOOK_x for each hook that this kernel supports.
 *
 * Hot path (every write): hooks call ovl_resolve(), which costs one
 * superblock lookup and one inode-cache lookup on a hit; the dentry walk
 * runs only on a miss.  Counters are per-CPU; only rare things (flushes,
 * errors) are sent to userspace.
 */
#include "kernel_layout.h"
#include "ovltrace.h"

/* Kernel pointers are read into u64 throughout; layout.py marks every hook
 * unsupported on other kernels, this only guards against a stale header. */
#if KPTR_SIZE != 8
#error "ovltrace supports kernels with 8-byte pointers only"
#endif

/* Read a kernel member into an integer variable, zero-extending. */
#define KREAD(dst, base, M) do {                                              \
	dst = 0;                                                                  \
	bpf_probe_read_kernel(&dst, SZ_##M, (void *)(base) + OFF_##M);            \
} while (0)

/* ---- maps filled by userspace ------------------------------------------ */
BPF_HASH(upper_devs, u32, struct slot_ref, MAX_UPPER_FS);   /* upper fs s_dev -> its slot */
BPF_HASH(ovl_devs, u32, struct slot_ref, MAX_SLOTS);        /* overlay sb s_dev -> slot */
BPF_HASH(dirs, struct dir_key, struct dir_val, MAX_DIRS);   /* upperdir/workdir inodes */
BPF_ARRAY(slot_gen, u32, MAX_SLOTS);
BPF_ARRAY(config, u32, CFG_NR);                              /* enum config_idx */

/* ---- kernel-side state ------------------------------------------------- */
BPF_ARRAY(kstate, u64, KS_NR);                               /* enum kstate_idx */
struct sb_val { u32 dev; u32 is_upper; u32 epoch; u32 pad; };
/* super_block * -> upper?  LRU: filled from the hot path, so it must never
 * be full (a full hash would stop caching new superblocks for good). */
BPF_TABLE("lru_hash", u64, struct sb_val, sb_filter, 1024);

/* inode * -> owner, as a direct-mapped cache in an array: array lookups
 * are inlined by the verifier, hash lookups are helper calls that cost
 * several times more.  A collision only costs a walk. */
struct icache_ent { u64 inode; u64 ino; u32 igen; u32 slot; u32 gen; u32 role; u32 epoch; u32 dev; u64 check; };
BPF_ARRAY(icache, struct icache_ent, ICACHE_SIZE);           /* ICACHE_SIZE: a power of 2 */
/* Directory answers: dentry * -> the owner of what lies below it, direct-
 * mapped like icache, so that a new file's walk stops at its parent.  An
 * answer holds only while the dentry still has the same directory (inode
 * pointer, number and generation: a removed directory whose dentry, inode
 * and number are reused differs in generation), no directory can have
 * moved (rename_seq: every rename syscall that succeeds bumps it) and the
 * owner's slot lives ("outside any overlay": the set of overlays is the
 * same, the epoch).  Never
 * workdir answers (copy-up moves temp dirs out of it inside the kernel,
 * with no syscall), no "outside any overlay" answer while mounts are
 * unsettled, and only while the renames hook is attached (CFG_DIR_CACHE). */
struct dcache_ent { u64 dentry; u64 inode; u64 ino; u64 rseq; u32 igen; u32 slot; u32 gen;
                    u32 role; u32 epoch; u32 dev; u64 check; };
BPF_ARRAY(dcache, struct dcache_ent, DCACHE_SIZE);           /* DCACHE_SIZE: a power of 2 */
struct copyup_key { u64 inode; u64 ino; };
BPF_TABLE("lru_hash", struct copyup_key, u8, copyup_seen, 16384);  /* temp inodes counted */
/* inode * -> owner while dirty, for the dirty-now gauge.  A plain hash: an
 * insert costs less than in an LRU one, and userspace drops entries older
 * than DIRTY_MAX_AGE (inodes deleted while dirty), so a full map (counted
 * as map_full) empties again. */
BPF_HASH(dirty_inodes, u64, struct dirty_val, DIRTY_SIZE);

BPF_PERCPU_ARRAY(stats, struct ovl_stats, MAX_SLOTS);

/* Orphans (see ovltrace.h); LRU: userspace takes each within a sample or
 * two, so only a flood of them while it lags can push one out. */
BPF_TABLE("lru_hash", struct orphan_key, struct orphan_val, orphans, ORPHAN_SIZE);
/* Orphans userspace has charged to an owner with a slot: from then on
 * their inode's events go to that slot (through the walk), so the orphan's
 * counters stop moving and userspace can read them a last time and drop
 * it without losing an event that lands in between. */
BPF_HASH(orphans_decided, struct orphan_key, u8, ORPHAN_SIZE);
BPF_PERCPU_ARRAY(orphan_scratch, struct orphan_val, 1);      /* too big for the stack */
BPF_PERCPU_ARRAY(orphan_ids, u64, 1);                        /* orphans made on this CPU */

/* Bytes of folios just dirtied, waiting for the __mark_inode_dirty
 * (I_DIRTY_PAGES) that the kernel calls right after, on the same CPU, for
 * the same mapping: that hook resolves the owner, so the folio hook need
 * not.  Only the dirty-hook event that comes NEXT on this CPU may take
 * them (dirty_seq): should the task migrate or be preempted in between,
 * the bytes are counted as unmatched (CNT_FOLIO_UNMATCHED), never
 * credited to another file that happens to reuse the mapping's memory. */
struct pending_bytes { u64 mapping; u64 bytes; u64 seq; u64 dirty_seq; };
BPF_PERCPU_ARRAY(folio_pending, struct pending_bytes, 1);
BPF_PERCPU_ARRAY(counters, u64, CNT_NR);

BPF_HASH(flushes, u32, struct flush_state, 4096);           /* tid -> flush */
BPF_HASH(work_flush, u64, u64, 4096);                        /* wb work * -> flush id */
BPF_HASH(cur_work, u32, u64, 1024);                          /* flusher tid -> flush id */
BPF_HASH(flush_last, u64, u64, 4096);                        /* flush id -> last wb ns */
BPF_ARRAY(global_sync, u64, 1);                              /* id of the sync() running */
BPF_HASH(victims, struct victim_key, u64, MAX_VICTIMS);     /* flush x slot -> bytes */
struct pending_ret { struct slot_ref ref; u32 dev; u32 kind; };
BPF_HASH(ret_pending, u32, struct pending_ret, 4096);        /* tid -> fsync on overlay */

/* Three channels, so an error storm can never crowd out flushes, nor a
 * burst of container starts either: */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);        /* flushes, errors returned */
BPF_RINGBUF_OUTPUT(error_events, RINGBUF_PAGES);  /* writeback errors */
BPF_RINGBUF_OUTPUT(mount_events, RINGBUF_PAGES);  /* overlay mounts */

/* *counter + 1, atomically, returning the new value.  Kernels before 5.12
 * have no fetching atomics (BPF_FETCH; probes.py defines HAVE_BPF_FETCH
 * from 5.12): there the value is read after the add, and two CPUs adding
 * at once may read the same one. */
static __always_inline u64 next_value(u64 *counter)
{
#ifdef HAVE_BPF_FETCH
	return __sync_fetch_and_add(counter, 1) + 1;
#else
	__sync_fetch_and_add(counter, 1);
	return *counter;
#endif
}

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

/* Per-CPU counters are added to atomically all the same: a BPF program runs
 * with migration, not preemption, disabled, so on a preemptible kernel two
 * of them can interleave on one CPU and a plain ++ loses counts (seen: 7 of
 * 12,988 writeback errors under an error storm). */
static __always_inline struct ovl_stats *slot_stats(u32 slot)
{
	return stats.lookup(&slot);
}

static __always_inline u32 cur_epoch(void)
{
	u32 zero = 0;
	u32 *e = config.lookup(&zero);
	return e ? *e : 0;
}

/* Set unless copy_up runs on its tracepoint stand-in; the workdir estimate
 * then stays quiet: copy-ups are counted once, exactly, by the function hook,
 * or not at all when a forced mechanism cannot reach ovl_copy_up_flags. */
static __always_inline int fn_copy_up_on(void)
{
	u32 idx = CFG_FN_COPY_UP;
	u32 *v = config.lookup(&idx);
	return v && *v;
}

static __always_inline u64 kstate_get(u32 idx)
{
	u64 *v = kstate.lookup(&idx);
	return v ? *v : 0;
}

/* Some overlay mount has begun that userspace does not know yet: dirtying
 * under no known overlay may be that mount's, so it is kept as an orphan. */
static __always_inline int mounts_unsettled(void)
{
	u32 idx = CFG_SETTLED;
	u32 *settled = config.lookup(&idx);
	return (u32)kstate_get(KS_MOUNT_SEQ) != (settled ? *settled : 0);
}

static __always_inline int slot_alive(u32 slot, u32 gen)
{
	u32 *g = slot_gen.lookup(&slot);
	return g && *g == gen;
}

static __always_inline u32 icache_index(u64 inode)
{
	return ((inode >> 4) * 0x9E3779B97F4A7C15ULL) >> 40 & (ICACHE_SIZE - 1);
}

static __always_inline u64 icache_check(struct icache_ent *c)
{
	return c->inode ^ c->ino ^ ((u64)c->igen << 32 | c->slot) ^
	       ((u64)c->gen << 32 | c->role) ^ ((u64)c->epoch << 32 | c->dev) ^ 0x6f766c7472616365ULL;
}

/* The check is computed from the values written, never read back from
 * *c: another CPU may be writing the same entry, and a check over the mix
 * would make a torn entry look valid. */
static __always_inline void icache_put(struct icache_ent *c, u64 inode, u64 ino, u32 igen,
                                       u32 slot, u32 gen, u32 role, u32 dev)
{
	struct icache_ent ne = { .inode = inode, .ino = ino, .igen = igen, .slot = slot,
	                         .gen = gen, .role = role, .epoch = cur_epoch(), .dev = dev };
	ne.check = icache_check(&ne);
	*c = ne;
}

static __always_inline u32 dcache_index(u64 dentry)
{
	return ((dentry >> 4) * 0x9E3779B97F4A7C15ULL) >> 40 & (DCACHE_SIZE - 1);
}

static __always_inline u64 dcache_check(struct dcache_ent *c)
{
	return c->dentry ^ c->inode ^ c->ino ^ c->rseq ^ ((u64)c->igen << 32 | c->slot) ^
	       ((u64)c->gen << 32 | c->role) ^ ((u64)c->epoch << 32 | c->dev) ^ 0x646972636163686fULL;
}

static __always_inline int dir_cache_on(void)
{
	u32 idx = CFG_DIR_CACHE;
	u32 *v = config.lookup(&idx);
	return v && *v;
}

/* The owner of an upper-fs inode, and what the hooks need of the inode. */
/* An overlay mount in progress in this thread (mount(2), or fsconfig's
 * FSCONFIG_CMD_CREATE): a filesystem it dirties is an upper fs. */
struct mounting_val { u64 start_ns; u64 dir; u64 data; u32 seq; u32 kind; s32 fd; u32 pad; };
BPF_HASH(mounting, u32, struct mounting_val, 1024);         /* tid -> mount */

static __always_inline int in_overlay_mount(void)
{
	if (!kstate_get(KS_MOUNTS_INFLIGHT))
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	return mounting.lookup(&tid) != 0;
}

/* The owner of an upper-fs inode, and what the hooks need of the inode. */
struct owner { u32 slot; u32 gen; u32 role; u32 dev; u64 ino; u64 state; u64 mapping;
               struct ovl_stats *orphan;   /* ROLE_ORPHAN: its counters */ };

/* The counters an owner's events add to. */
static __always_inline struct ovl_stats *owner_stats(struct owner *o)
{
	return o->role == ROLE_ORPHAN ? o->orphan : slot_stats(o->slot);
}

/* The inode members of the hot path lie close together: read them with
 * one helper call instead of four. */
struct inode_span { u64 w[INODE_SPAN_LEN / 8]; };     /* 8-byte aligned span */
/* members are naturally aligned: one load of the right width each */
#define SPAN_GET(dst, sp, M) do {                                              \
	void *_p = (void *)(sp).w + (OFF_##M - INODE_SPAN_START);                 \
	if (SZ_##M == 8) dst = *(u64 *)_p;                                        \
	else if (SZ_##M == 4) dst = *(u32 *)_p;                                   \
	else if (SZ_##M == 2) dst = *(u16 *)_p;                                   \
	else dst = *(u8 *)_p;                                                     \
} while (0)

/* The cached owner of what lies below directory `dentry` (inode `dinode`,
 * number `dino`, generation `igen`; igen_known 0: read it if needed) into
 * *o, if its answer still holds. */
static __always_inline int dcache_get(u64 dentry, u64 dinode, u64 dino, u32 igen, int igen_known,
                                      u64 rseq, u32 epoch, int unsettled, struct owner *o)
{
	u32 idx = dcache_index(dentry);
	struct dcache_ent *c = dcache.lookup(&idx);
	if (!c)
		return 0;
	struct dcache_ent ce = *c;    /* one copy, checked and used */
	if (ce.dentry != dentry || ce.inode != dinode || ce.ino != dino || ce.rseq != rseq ||
	    ce.check != dcache_check(&ce))
		return 0;
	if (!igen_known)
		KREAD(igen, dinode, inode_i_generation);
	if (ce.igen != igen)
		return 0;
	/* as in icache: an overlay's answer holds while its slot lives (mounts
	 * and unmounts elsewhere, ten a second on a busy host, leave it be);
	 * "outside any overlay" only while the set of overlays is the same,
	 * and not while a mount is unsettled (the file may be a new overlay's:
	 * the walk keeps it as an orphan) */
	if (ce.role != ROLE_FS ? !slot_alive(ce.slot, ce.gen) : ce.epoch != epoch || unsettled)
		return 0;
	o->slot = ce.slot;
	o->gen = ce.gen;
	o->role = ce.role;
	o->dev = ce.dev;
	return 1;
}

static __always_inline void dcache_put(u64 dentry, u64 dinode, u64 dino, u64 rseq, u32 epoch,
                                       struct owner *o)
{
	u32 idx = dcache_index(dentry);
	struct dcache_ent *c = dcache.lookup(&idx);
	if (!c)
		return;
	u32 igen = 0;
	KREAD(igen, dinode, inode_i_generation);
	struct dcache_ent ne = { .dentry = dentry, .inode = dinode, .ino = dino, .rseq = rseq,
	                         .igen = igen, .slot = o->slot, .gen = o->gen, .role = o->role,
	                         .epoch = epoch, .dev = o->dev };
	ne.check = dcache_check(&ne);
	*c = ne;
}

/* A file's owner from its directory's cached answer: no superblock
 * filter, no walk.  Five reads: the file's dentry, its parent, the
 * parent's inode and that inode's number and generation. */
static __always_inline int parent_answer(void *inode, u32 epoch, int unsettled, struct owner *o,
                                         struct inode_span *sp)   /* scratch: stack is short */
{
	u64 rseq = kstate_get(KS_RENAME_SEQ);
	u64 first = 0, parent = 0, pinode = 0;
	KREAD(first, inode, inode_i_dentry);
	if (!first)
		return 0;
	u64 dentry = first - OFF_dentry_d_alias;
	KREAD(parent, dentry, dentry_d_parent);
	if (!parent || parent == dentry)
		return 0;
	KREAD(pinode, parent, dentry_d_inode);
	if (!pinode)
		return 0;
	if (bpf_probe_read_kernel(sp, sizeof(*sp), (void *)pinode + INODE_SPAN_START))
		return 0;
	u64 pino;
	u32 pgen = 0;
	SPAN_GET(pino, *sp, inode_i_ino);
#ifdef INODE_GEN_SEPARATE
	int known = 0;
#else
	int known = 1;
	SPAN_GET(pgen, *sp, inode_i_generation);
#endif
	return dcache_get(parent, pinode, pino, pgen, known, rseq, epoch, unsettled, o);
}

/* The orphan record of `inode` (made from the walk in *w when new), or 0. */
static __always_inline struct orphan_val *orphan_of(u64 inode, u64 ino, struct orphan_val *w)
{
	struct orphan_key k = { .inode = inode, .ino = ino };
	if (orphans_decided.lookup(&k))
		return 0;
	struct orphan_val *v = orphans.lookup(&k);
	if (v || !w)
		return v;
	/* per CPU, with the CPU in the top bits: only the programs of one CPU
	 * (one preempting another) share a counter */
	u32 zero = 0;
	u64 *id = orphan_ids.lookup(&zero);
	if (!id)
		return 0;
	w->id = (bpf_get_smp_processor_id() & 0x3ff) << 22 | (next_value(id) & 0x3fffff);
	w->seq = (u32)kstate_get(KS_MOUNT_SEQ);
	w->first_ns = bpf_ktime_get_ns();
	__builtin_memset(&w->s, 0, sizeof(w->s));
	orphans.insert(&k, w);            /* BPF_NOEXIST: another CPU's record wins */
	v = orphans.lookup(&k);
	if (!v)
		count(CNT_ORPHANS_FULL);
	return v;
}

/* Which overlay (or which upper fs, outside any overlay) owns `inode`?
 * Returns 0 when the inode is not on an upper fs we watch. */
static __always_inline int ovl_resolve(void *inode, struct owner *o)
{
	struct inode_span sp;
	if (bpf_probe_read_kernel(&sp, sizeof(sp), inode + INODE_SPAN_START))
		return 0;
	u64 ino, sb, state;
	u32 igen;
	SPAN_GET(ino, sp, inode_i_ino);
#ifdef INODE_GEN_SEPARATE
	KREAD(igen, inode, inode_i_generation);
#else
	SPAN_GET(igen, sp, inode_i_generation);
#endif
	SPAN_GET(state, sp, inode_i_state);
	SPAN_GET(o->mapping, sp, inode_i_mapping);
	o->ino = ino;
	o->state = state;

	/* Hit: the inode struct is the key; its number and generation prove
	 * it is still the same file, `check` that no other CPU was halfway
	 * through rewriting the entry. */
	u64 key = (u64)inode;
	u32 idx = icache_index(key);
	struct icache_ent *c = icache.lookup(&idx);
	struct icache_ent ce = {};
	if (c)
		ce = *c;          /* one copy, checked and used: *c may change meanwhile */
	u32 epoch = cur_epoch();
	if (ce.inode == key && ce.ino == ino && ce.igen == igen && ce.check == icache_check(&ce)) {
		/* Not on a watched upper fs: valid until the set of watched
		 * filesystems changes. */
		if (ce.role == ROLE_NONE && ce.epoch == epoch)
			return 0;
		/* positive answers stay valid while their slot lives; "outside
		 * any overlay" ones until the set of overlays changes; orphans
		 * also while userspace has not taken theirs */
		if (ce.role == ROLE_ORPHAN) {
			if (ce.epoch == epoch) {
				struct orphan_val *ov = orphan_of(key, ino, 0);
				if (ov && ov->id == ce.gen) {
					o->slot = ORPHAN_SLOT;
					o->gen = ce.gen;
					o->role = ROLE_ORPHAN;
					o->dev = ce.dev;
					o->orphan = &ov->s;
					return 1;
				}
			}
		} else if (ce.role != ROLE_FS ? slot_alive(ce.slot, ce.gen) : ce.epoch == epoch) {
			o->slot = ce.slot;
			o->gen = ce.gen;
			o->role = ce.role;
			o->dev = ce.dev;
			return 1;
		}
	}

	/* A new file (not a directory: one may be an upperdir or workdir
	 * itself) in a directory whose owner is cached. */
	u32 mode;
	SPAN_GET(mode, sp, inode_i_mode);
	SPAN_GET(sb, sp, inode_i_sb);          /* before sp is reused */
	if ((mode & 0170000) != 0040000 && dir_cache_on() &&
	    parent_answer(inode, epoch, mounts_unsettled(), o, &sp)) {
		count(CNT_CACHE_MISS);
		count(CNT_DIR_CACHE_HITS);
		if (c)
			icache_put(c, key, ino, igen, o->slot, o->gen, o->role, o->dev);
		return 1;
	}

	/* Filter by superblock first: most inodes of other filesystems
	 * leave here.  is_upper 2: an fs an overlay mount is using that
	 * userspace has not seen yet, until the epoch changes. */
	if (!sb)
		return 0;
	struct sb_val *sv = sb_filter.lookup(&sb);
	u32 dev;
	int sv_upper;
	if (sv && (sv->is_upper == 1 || sv->epoch == epoch) &&
	    (sv->is_upper || !in_overlay_mount())) {
		sv_upper = sv->is_upper;
		dev = sv->dev;
	} else {
		dev = 0;
		KREAD(dev, sb, super_block_s_dev);
		struct slot_ref *u = upper_devs.lookup(&dev);
		sv_upper = u ? 1 : in_overlay_mount() ? 2 : 0;
		struct sb_val nv = { .dev = dev, .is_upper = sv_upper, .epoch = epoch };
		sb_filter.update(&sb, &nv);
	}
	if (!sv_upper) {
		/* remember "not ours" for this inode: the next event costs no
		 * hash lookup */
		if (c)
			icache_put(c, key, ino, igen, 0, 0, ROLE_NONE, 0);
		return 0;
	}
	o->dev = dev;
	count(CNT_CACHE_MISS);

	/* Miss: walk inode -> its dentry -> parents until an upperdir or a
	 * workdir of a known overlay on this fs.  While mounts are unsettled
	 * the walk's inode numbers are kept for an orphan record. */
	int unsettled = mounts_unsettled();
	struct slot_ref *fs = upper_devs.lookup(&dev);
	if (!fs && !unsettled)
		return 0;
	o->slot = fs ? fs->slot : 0;
	o->gen = fs ? fs->gen : 0;
	o->role = ROLE_FS;

	u64 first = 0;
	KREAD(first, inode, inode_i_dentry);
	if (!first) {
		count(CNT_WALK_NO_DENTRY);
		return fs != 0;                    /* unattributed, not cached */
	}
	u32 zero = 0;
	/* looked up unconditionally and null-checked at once: with a lookup
	 * only while unsettled, LLVM hoists &w->anc out of the loop above its
	 * null check, which the 6.1 verifier refuses */
	struct orphan_val *w = orphan_scratch.lookup(&zero);
	if (!w)
		return fs != 0;                    /* cannot happen: a per-CPU array's slot 0 */
	void *dentry = (void *)(first - OFF_dentry_d_alias);
	u64 dino = ino, dinode = (u64)inode;
	int found = 0;
	u32 levels = 0;
	struct dir_key dk = { .dev = dev };
	/* read before the walk: a rename that ends during it voids what it finds */
	int dc_on = dir_cache_on();
	u64 rseq = dc_on ? kstate_get(KS_RENAME_SEQ) : 0;
	u64 parent_dentry = 0, parent_inode = 0, parent_ino = 0;
	int dc_hit = 0;
	for (int i = 0; i < OVL_MAX_DEPTH; i++) {
		dk.ino = dino;
		levels = i + 1;
		if (unsettled)
			w->anc[i & (ORPHAN_ANC - 1)] = dino;
		if (i > 0 && dc_on) {
			if (i == 1) {
				parent_dentry = (u64)dentry;
				parent_inode = dinode;
				parent_ino = dino;
			}
			if (dcache_get((u64)dentry, dinode, dino, 0, 0, rseq, epoch, unsettled, o)) {
				count(CNT_DIR_CACHE_HITS);
				found = 1;
				dc_hit = i;
				break;
			}
		}
		struct dir_val *dv = dirs.lookup(&dk);
		if (dv) {
			o->slot = dv->slot;
			o->gen = dv->gen;
			o->role = dv->role;
			found = 1;
			break;
		}
		u64 parent = 0;
		KREAD(parent, dentry, dentry_d_parent);
		if (!parent || parent == (u64)dentry) {
			found = 2;                     /* reached the fs root */
			break;
		}
		dentry = (void *)parent;
		dinode = 0;
		KREAD(dinode, dentry, dentry_d_inode);
		if (!dinode)
			break;
		KREAD(dino, dinode, inode_i_ino);
	}
	if (!found) {
		count(CNT_WALK_TOO_DEEP);
		return fs != 0;
	}
	if (found == 2 && unsettled) {
		w->dev = dev;
		w->levels = levels;
		struct orphan_val *ov = orphan_of(key, ino, w);
		if (ov) {
			o->slot = ORPHAN_SLOT;
			o->gen = ov->id;
			o->role = ROLE_ORPHAN;
			o->orphan = &ov->s;
		} else if (!fs) {
			return 0;
		}
	} else if (!fs && found == 2) {
		return 0;
	}
	/* Temp files in workdir become upper files when copy-up renames them:
	 * don't cache the workdir answer. */
	if (o->role != ROLE_WORK && c)
		icache_put(c, key, ino, igen, o->slot, o->gen, o->role, dev);
	/* the parent's answer, for its next new file; "outside any overlay"
	 * only once every mount is settled */
	if (dc_on && parent_dentry && dc_hit != 1 && o->role != ROLE_WORK && o->role != ROLE_ORPHAN &&
	    !(o->role == ROLE_FS && unsettled))
		dcache_put(parent_dentry, parent_inode, parent_ino, rseq, epoch, o);
	return 1;
}

static __always_inline void note_copy_up_temp(void *inode, struct owner *o,
                                              struct ovl_stats *s)
{
	u32 mode = 0;
	KREAD(mode, inode, inode_i_mode);
	if ((mode & 0170000) != 0100000)      /* regular files only */
		return;
	/* BPF_NOEXIST: of two CPUs dirtying the same temp file, one counts */
	struct copyup_key key = { .inode = (u64)inode, .ino = o->ino };
	u8 one = 1;
	if (copyup_seen.insert(&key, &one) == 0)
		__sync_fetch_and_add(&s->copy_ups, 1);
}

/* ---- dirtying ------------------------------------------------------------ */

static __always_inline void on_folio_dirty(void *folio, void *mapping)
{
	u64 bytes = K_PAGE_SIZE;
#ifdef OFF_folio__flags_1
	/* flags and _flags_1 (the order of a large folio) in one read; both
	 * are unsigned longs, so u64 words (KPTR_SIZE is 8) */
	struct { u64 w[OFF_folio__flags_1 / 8 + 1]; } f;
	if (folio && bpf_probe_read_kernel(&f, sizeof(f), folio) == 0 &&
	    (f.w[OFF_folio_flags / 8] & (1UL << K_PG_head)))
		bytes = K_PAGE_SIZE << (f.w[OFF_folio__flags_1 / 8] & 0xff);
#endif
	u32 zero = 0;
	struct pending_bytes *p = folio_pending.lookup(&zero);
	if (!p)
		return;
	int live = p->bytes && p->seq == p->dirty_seq;
	if (live && p->mapping == (u64)mapping) {
		p->bytes += bytes;
		return;
	}
	if (live)
		count(CNT_FOLIO_UNMATCHED);
	p->mapping = (u64)mapping;
	p->bytes = bytes;
	p->seq = p->dirty_seq;
}

/* Called from every inode dirty event: the bytes of the folios that made
 * this I_DIRTY_PAGES call, if any; any older pending bytes expire. */
static __always_inline u64 take_pending_bytes(u64 mapping, u64 flags)
{
	u32 zero = 0;
	struct pending_bytes *p = folio_pending.lookup(&zero);
	if (!p)
		return 0;
	u64 bytes = 0;
	if (p->bytes && p->seq == p->dirty_seq) {
		if ((flags & K_I_DIRTY_PAGES) && mapping && p->mapping == mapping)
			bytes = p->bytes;
		else
			count(CNT_FOLIO_UNMATCHED);
	}
	p->bytes = 0;
	p->dirty_seq++;
	return bytes;
}

static __always_inline void on_inode_dirty(void *inode, u64 flags)
{
	struct owner o = {};
	int ours = ovl_resolve(inode, &o);
	u64 bytes = take_pending_bytes(o.mapping, flags);
	if (!ours)
		return;
	struct ovl_stats *s = owner_stats(&o);
	if (!s)
		return;
	int estimate = o.role == ROLE_WORK && !fn_copy_up_on();   /* rare: workdir only */
	if (bytes) {
		__sync_fetch_and_add(&s->bytes_dirtied, bytes);
		if (estimate)
			__sync_fetch_and_add(&s->copy_up_bytes, bytes);
	}
	if (flags & K_I_DIRTY_PAGES)
		__sync_fetch_and_add(&s->dirty_calls[DC_PAGES], 1);
	if (flags & K_I_DIRTY_SYNC)
		__sync_fetch_and_add(&s->dirty_calls[DC_SYNC], 1);
	if (flags & K_I_DIRTY_DATASYNC)
		__sync_fetch_and_add(&s->dirty_calls[DC_DATASYNC], 1);
	if (flags & K_I_DIRTY_TIME)
		__sync_fetch_and_add(&s->dirty_calls[DC_TIME], 1);
	if (estimate)
		note_copy_up_temp(inode, &o, s);

	if (o.state & K_I_DIRTY)
		return;                           /* already dirty */
	if (!(flags & (K_I_DIRTY_PAGES | K_I_DIRTY_SYNC | K_I_DIRTY_DATASYNC)))
		return;                           /* lazytime only: not "dirty" yet */
	__sync_fetch_and_add(&s->inodes_dirtied, 1);
	u64 key = (u64)inode;
	struct dirty_val dv = { .slot = o.slot, .gen = o.gen,
	                        .since_ns = bpf_ktime_get_ns(), .ino = o.ino };
	if (dirty_inodes.update(&key, &dv))
		count(CNT_MAP_FULL);
}

/* ---- flushes: syncfs, sync, umount -------------------------------------- */

static __always_inline void flush_begin(u32 kind, u32 target_dev)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct flush_state st = {};
	st.start_ns = bpf_ktime_get_ns();
	st.id = st.start_ns ^ ((u64)tid << 44);   /* unique per call */
	st.last_ns = st.start_ns;
	st.kind = kind;
	st.target_dev = target_dev;
	st.pid = id >> 32;
	st.tid = tid;
	st.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&st.comm, sizeof(st.comm));
	flushes.update(&tid, &st);
	if (kind == FLUSH_SYNC) {
		u32 zero = 0;
		global_sync.update(&zero, &st.id);
	}
}

static __always_inline void emit_flush(struct flush_state *st, s64 ret, u64 end)
{
	struct event *e = events.ringbuf_reserve(sizeof(struct event));
	if (!e) {
		count(CNT_EVENTS_DROPPED);
		return;
	}
	event_init_flush(e, EV_FLUSH, st);
	e->dev = st->target_dev;
	e->err = ret;
	e->end_ns = end;
	events.ringbuf_submit(e, 0);
}

static __always_inline void flush_end(s64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct flush_state *st = flushes.lookup(&tid);
	if (!st)
		return;
	u64 now = bpf_ktime_get_ns();
	emit_flush(st, ret, now);
	if (st->kind == FLUSH_SYNC) {
		u32 zero = 0;
		u64 *g = global_sync.lookup(&zero);
		if (g && *g == st->id)
			*g = 0;
	}
	if (st->kind == FLUSH_UMOUNT) {
		/* The overlay's superblock is shut down after the syscall returns
		 * (task work), and that is where the upper fs gets synced: keep
		 * the flush open for the writeback work this task queues next. */
		st->exit_ns = now;
		st->last_ns = now;
		return;
	}
	flushes.delete(&tid);
}

/* The flush a writeback work queued by the current task belongs to. */
static __always_inline struct flush_state *current_flush(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct flush_state *st = flushes.lookup(&tid);
	if (!st)
		return 0;
	if (st->exit_ns && bpf_ktime_get_ns() - st->last_ns > UMOUNT_TAIL_NS)
		return 0;                             /* that umount is long done */
	return st;
}

static __always_inline void on_wb_queue(void *work)
{
	struct flush_state *st = current_flush();
	if (!st)
		return;
	u64 key = (u64)work;
	work_flush.update(&key, &st->id);
	st->last_ns = bpf_ktime_get_ns();
	flush_last.update(&st->id, &st->last_ns);
	count(CNT_FLUSH_WORKS);
}

static __always_inline void on_wb_start(void *work)
{
	u64 key = (u64)work;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *fid = work_flush.lookup(&key);
	if (fid) {
		cur_work.update(&tid, fid);
		return;
	}
	/* sync(2) first wakes every flusher without queueing a work of its
	 * own: writeback for reason "sync" while a sync() runs is its. */
	u32 reason = 0;
	KREAD(reason, work, wb_writeback_work_reason);
	if (reason != K_WB_REASON_SYNC)
		return;
	u32 zero = 0;
	u64 *g = global_sync.lookup(&zero);
	if (g && *g)
		cur_work.update(&tid, g);
}

static __always_inline void on_wb_written(void *work)
{
	u64 key = (u64)work;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *fid = work_flush.lookup(&key);
	if (fid) {
		u64 now = bpf_ktime_get_ns();
		flush_last.update(fid, &now);
		work_flush.delete(&key);
	}
	cur_work.delete(&tid);
}

/* Pages of `inode` written back: count them for its owner and for the
 * flush that caused them, if any. */
static __always_inline void on_inode_written(void *inode, u64 pages)
{
	struct owner o = {};
	if (!ovl_resolve(inode, &o))
		return;
	struct ovl_stats *s = owner_stats(&o);
	u64 bytes = pages * K_PAGE_SIZE;
	if (s && pages)
		__sync_fetch_and_add(&s->bytes_written_back, bytes);

	if (!(o.state & K_I_DIRTY_ALL)) {
		u64 key = (u64)inode;
		dirty_inodes.delete(&key);
	}
	if (!pages)
		return;

	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 fid = 0;
	u64 *w = cur_work.lookup(&tid);
	if (w) {
		fid = *w;
	} else {
		/* writeback in the flushing task's own context */
		struct flush_state *st = flushes.lookup(&tid);
		if (st && !st->exit_ns)
			fid = st->id;
	}
	if (!fid)
		return;
	/* Shared by the CPUs writing back for one flush: create the entry with
	 * BPF_NOEXIST (if another CPU was first, its entry stays), then add to
	 * whichever entry is there.  Still missing: the map is full. */
	struct victim_key vk = { .flush_id = fid, .slot = o.slot, .gen = o.gen };
	u64 *v = victims.lookup(&vk);
	if (!v) {
		u64 zero = 0;
		victims.insert(&vk, &zero);
		v = victims.lookup(&vk);
		if (!v) {
			count(CNT_MAP_FULL);
			return;
		}
	}
	__sync_fetch_and_add(v, bytes);
}

/* ---- writeback errors ------------------------------------------------- */

/* errno > 0: given by the hook (__filemap_set_wb_err's err); else read
 * from the mapping. */
static __always_inline void on_wb_error(void *mapping, s32 errno)
{
	if (errno <= 0) {
		/* The tracepoint passes errseq_set()'s return value, which is the
		 * value BEFORE the error: read the new one from the mapping. */
		u32 errseq = 0;
		KREAD(errseq, mapping, address_space_wb_err);
		errno = errseq & 0xfff;           /* errseq_t keeps -errno in its low bits */
	}
	u64 inode = 0;
	KREAD(inode, mapping, address_space_host);
	if (!inode)
		return;
	struct owner o = {};
	if (!ovl_resolve((void *)inode, &o))
		return;
	struct ovl_stats *s = owner_stats(&o);
	if (s)
		__sync_fetch_and_add(&s->writeback_errors, 1);
	struct event *e = error_events.ringbuf_reserve(sizeof(struct event));
	if (!e) {
		count(CNT_ERROR_EVENTS_DROPPED);     /* the counters above stay exact */
		return;
	}
	event_init(e, EV_WB_ERROR);
	e->slot = o.slot;
	e->gen = o.gen;
	e->dev = o.dev;
	e->ino = o.ino;
	e->err = errno;
	error_events.ringbuf_submit(e, 0);
}

/* ---- file descriptors -> superblock --------------------------------- */

static __always_inline u32 fd_dev(int fd)
{
	void *task = (void *)bpf_get_current_task();
	u64 files = 0, fdt = 0, fdarr = 0, file = 0, inode = 0, sb = 0;
	u32 max_fds = 0, dev = 0;
	KREAD(files, task, task_struct_files);
	if (!files)
		return 0;
	KREAD(fdt, files, files_struct_fdt);
	if (!fdt)
		return 0;
	KREAD(max_fds, fdt, fdtable_max_fds);
	if (fd < 0 || (u32)fd >= max_fds)
		return 0;
	KREAD(fdarr, fdt, fdtable_fd);
	bpf_probe_read_kernel(&file, KPTR_SIZE, (void *)(fdarr + (u64)fd * KPTR_SIZE));
	if (!file)
		return 0;
	KREAD(inode, file, file_f_inode);
	if (!inode)
		return 0;
	KREAD(sb, inode, inode_i_sb);
	if (!sb)
		return 0;
	KREAD(dev, sb, super_block_s_dev);
	return dev;
}

static __always_inline void on_syncfs_enter(int fd)
{
	u32 dev = fd_dev(fd);
	struct slot_ref *ov = ovl_devs.lookup(&dev);
	if (ov && slot_alive(ov->slot, ov->gen)) {
		struct ovl_stats *s = slot_stats(ov->slot);
		if (s)
			__sync_fetch_and_add(&s->syncfs_calls, 1);
	}
	flush_begin(FLUSH_SYNCFS, dev);
}

static __always_inline void on_fsync_enter(int fd, u32 kind)
{
	u32 dev = fd_dev(fd);
	struct slot_ref *ov = ovl_devs.lookup(&dev);
	if (!ov || !slot_alive(ov->slot, ov->gen))
		return;
	struct ovl_stats *s = slot_stats(ov->slot);
	if (s)
		__sync_fetch_and_add(&s->fsync_calls, 1);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pending_ret p = { .ref = *ov, .dev = dev, .kind = kind };
	ret_pending.update(&tid, &p);
}

static __always_inline void on_fsync_exit(s64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct pending_ret *p = ret_pending.lookup(&tid);
	if (!p)
		return;
	if (ret < 0) {
		struct ovl_stats *s = slot_stats(p->ref.slot);
		if (s)
			__sync_fetch_and_add(&s->errors_returned, 1);
		struct event *e = events.ringbuf_reserve(sizeof(struct event));
		if (e) {
			event_init(e, EV_ERR_RETURNED);
			e->kind = p->kind;
			e->slot = p->ref.slot;
			e->gen = p->ref.gen;
			e->dev = p->dev;
			e->err = -ret;
			events.ringbuf_submit(e, 0);
		} else {
			count(CNT_EVENTS_DROPPED);
		}
	}
	ret_pending.delete(&tid);
}

static __always_inline void on_syncfs_exit(s64 ret)
{
	if (ret < 0) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		struct flush_state *st = flushes.lookup(&tid);
		if (st) {
			u32 dev = st->target_dev;
			struct slot_ref *ov = ovl_devs.lookup(&dev);
			if (ov && slot_alive(ov->slot, ov->gen)) {
				struct ovl_stats *s = slot_stats(ov->slot);
				if (s)
					__sync_fetch_and_add(&s->errors_returned, 1);
			}
		}
	}
	flush_end(ret);
}

/* ==== tracepoint hooks (work on any kernel with these tracepoints) ==== */

#ifdef HOOK_inode_dirty
RAW_TRACEPOINT_PROBE(writeback_mark_inode_dirty)
{
	on_inode_dirty((void *)ctx->args[0], ctx->args[1]);
	return 0;
}
#endif

#ifdef HOOK_folio_dirty
#ifdef DIRTY_PAGE_TP
/* before folios (5.16): TP_PROTO(struct page *page, struct address_space
 * *mapping); the page cache of a writable fs holds no large pages there */
RAW_TRACEPOINT_PROBE(writeback_dirty_page)
{
	on_folio_dirty(0, (void *)ctx->args[1]);
	return 0;
}
#else
RAW_TRACEPOINT_PROBE(writeback_dirty_folio)
{
	on_folio_dirty((void *)ctx->args[0], (void *)ctx->args[1]);
	return 0;
}
#endif
#endif

#ifdef HOOK_writeback
/* TP_PROTO(struct inode *inode, struct writeback_control *wbc,
 *          unsigned long nr_to_write): wrote = nr_to_write - wbc->nr_to_write */
RAW_TRACEPOINT_PROBE(writeback_single_inode)
{
	s64 left = 0;
	KREAD(left, ctx->args[1], writeback_control_nr_to_write);
	s64 wrote = (s64)ctx->args[2] - left;
	on_inode_written((void *)ctx->args[0], wrote > 0 ? wrote : 0);
	return 0;
}

/* TP_PROTO(struct bdi_writeback *wb, struct wb_writeback_work *work) */
RAW_TRACEPOINT_PROBE(writeback_queue)
{
	on_wb_queue((void *)ctx->args[1]);
	return 0;
}

RAW_TRACEPOINT_PROBE(writeback_start)
{
	on_wb_start((void *)ctx->args[1]);
	return 0;
}

RAW_TRACEPOINT_PROBE(writeback_written)
{
	on_wb_written((void *)ctx->args[1]);
	return 0;
}
#endif

#ifdef HOOK_wb_error
/* TP_PROTO(struct address_space *mapping, int eseq) */
RAW_TRACEPOINT_PROBE(filemap_set_wb_err)
{
	on_wb_error((void *)ctx->args[0], 0);
	return 0;
}
#endif

#ifdef HOOK_syncfs
TRACEPOINT_PROBE(syscalls, sys_enter_syncfs)
{
	on_syncfs_enter(args->fd);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_syncfs)
{
	on_syncfs_exit(args->ret);
	return 0;
}
#endif

#ifdef HOOK_sync
TRACEPOINT_PROBE(syscalls, sys_enter_sync)
{
	flush_begin(FLUSH_SYNC, 0);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_sync)
{
	flush_end(args->ret);
	return 0;
}
#endif

#ifdef HOOK_umount
TRACEPOINT_PROBE(syscalls, sys_enter_umount)
{
	flush_begin(FLUSH_UMOUNT, 0);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct flush_state *st = flushes.lookup(&tid);
	if (st)
		bpf_probe_read_user_str(st->path, sizeof(st->path), (void *)args->name);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_umount)
{
	flush_end(args->ret);
	return 0;
}
#endif

#ifdef HOOK_mounts
/* ---- overlay mounts, as they happen --------------------------------------
 * Userspace learns of an overlay from these events even when it is gone
 * before the mount table could be read; until it has seen every mount
 * begun (CFG_SETTLED), dirtying under no known overlay is kept as orphans.
 * mount(2), and the new API: fsopen("overlay") -> fsconfig(upperdir,
 * workdir, ..., CMD_CREATE) -> fsmount -> move_mount. */

/* sys_enter_*: the syscall's arguments follow __syscall_nr, 8 bytes each
 * (their field names differ between kernels: "fs_name" / "_fs_name") */
#define SC_ARG(i) (*(u64 *)((char *)args + 16 + 8 * (i)))
#define U64_overlay  0x0079616c7265766fULL   /* "overlay\0" */
#define U64_upperdir 0x7269647265707075ULL   /* "upperdir" */
#define U64_workdir  0x007269646b726f77ULL   /* "workdir\0" */
#define K_MS_REMOUNT 32
#define K_MS_BIND 4096
#define K_MS_MOVE 8192
#define K_FSCONFIG_SET_STRING 1
#define K_FSCONFIG_CMD_CREATE 6
#define K_FSCONFIG_CMD_CREATE_EXCL 8

BPF_PERCPU_ARRAY(mount_scratch, struct mount_event, 1);       /* too big for the stack */
BPF_TABLE("lru_hash", u64, u32, ovl_fds, 1024);   /* tgid << 32 | fd: an overlay fs context or its mount */
BPF_HASH(fd_call, u32, s32, 1024);               /* tid -> fsopen("overlay") (-1) or fsmount's fs fd */

/* a user string that is "overlay" (len 8 with its NUL), or (len 9) "upperdir" */
static __always_inline u64 user_word(const void *user, long *len)
{
	char t[16] = {};
	*len = bpf_probe_read_user_str(t, sizeof(t), user);
	return *(u64 *)t;
}

static __always_inline int is_overlay(const void *user)
{
	long len;
	return user_word(user, &len) == U64_overlay && len == 8;
}

static __always_inline u64 fd_key(s32 fd)
{
	return (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (u32)fd;
}

static __always_inline struct mount_event *mount_event_new(u32 kind, s32 fd)
{
	u32 zero = 0;
	struct mount_event *e = mount_scratch.lookup(&zero);
	if (e)
		mount_event_init(e, kind, fd);
	return e;
}

static __always_inline void mount_event_send(struct mount_event *e, long n)
{
	u64 len = n > 0 ? n : 0;
	if (len > MOUNT_DATA_LEN)
		len = MOUNT_DATA_LEN;
	asm volatile("" : "+r"(len));        /* keep the mask: the verifier needs it */
	len &= 2 * MOUNT_DATA_LEN - 1;
	if (len > MOUNT_DATA_LEN)
		return;
	e->len = len;
	if (mount_events.ringbuf_output(e, __builtin_offsetof(struct mount_event, data) + len, 0))
		count(CNT_MOUNT_EVENTS_DROPPED);
}

static __always_inline void mount_begin(u32 kind, u64 dir, u64 data, s32 fd)
{
	u32 idx = KS_MOUNT_SEQ;
	u64 *seq = kstate.lookup(&idx);
	idx = KS_MOUNTS_INFLIGHT;
	u64 *inflight = kstate.lookup(&idx);
	if (!seq || !inflight)
		return;
	struct mounting_val m = { .start_ns = bpf_ktime_get_ns(), .dir = dir, .data = data,
	                          .kind = kind, .fd = fd };
	m.seq = (u32)next_value(seq);
	__sync_fetch_and_add(inflight, 1);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	mounting.update(&tid, &m);
}

static __always_inline void mount_end(s64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct mounting_val *m = mounting.lookup(&tid);
	if (!m)
		return;
	u32 idx = KS_MOUNTS_INFLIGHT;
	u64 *inflight = kstate.lookup(&idx);
	if (inflight)
		__sync_fetch_and_add(inflight, -1);
	struct mount_event *e = mount_event_new(m->kind, m->fd);
	if (e) {
		e->seq = m->seq;
		e->ret = ret;
		e->ts_ns = m->start_ns;
		if (m->dir)
			bpf_probe_read_user_str(e->dir, sizeof(e->dir), (void *)m->dir);
		long n = 0;
		if (m->data)
			n = bpf_probe_read_user_str(e->data, MOUNT_DATA_LEN, (void *)m->data);
		mount_event_send(e, n);
	}
	mounting.delete(&tid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mount)
{
	/* (dev_name, dir_name, type, flags, data) */
	if (SC_ARG(3) & (K_MS_REMOUNT | K_MS_BIND | K_MS_MOVE))
		return 0;
	if (is_overlay((void *)SC_ARG(2)))
		mount_begin(MK_MOUNT, SC_ARG(1), SC_ARG(4), -1);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_mount)
{
	mount_end(args->ret);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsopen)
{
	if (is_overlay((void *)SC_ARG(0))) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		s32 v = -1;
		fd_call.update(&tid, &v);
	}
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fsopen)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (!fd_call.lookup(&tid))
		return 0;
	fd_call.delete(&tid);
	if (args->ret >= 0) {
		u64 k = fd_key(args->ret);
		u32 one = 1;
		ovl_fds.update(&k, &one);
	}
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsconfig)
{
	/* (fd, cmd, key, value, aux) */
	s32 fd = SC_ARG(0);
	u32 cmd = SC_ARG(1);
	u64 k = fd_key(fd);
	if (!ovl_fds.lookup(&k))
		return 0;
	if (cmd == K_FSCONFIG_CMD_CREATE || cmd == K_FSCONFIG_CMD_CREATE_EXCL) {
		mount_begin(MK_FS_CREATE, 0, 0, fd);
		return 0;
	}
	if (cmd != K_FSCONFIG_SET_STRING)
		return 0;
	long len;
	u64 w = user_word((void *)SC_ARG(2), &len);
	u32 kind = w == U64_upperdir && len == 9 ? MK_FS_UPPER :
	           w == U64_workdir && len == 8 ? MK_FS_WORK : 0;
	if (!kind)
		return 0;
	struct mount_event *e = mount_event_new(kind, fd);
	if (e)
		mount_event_send(e, bpf_probe_read_user_str(e->data, MOUNT_DATA_LEN, (void *)SC_ARG(3)));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fsconfig)
{
	mount_end(args->ret);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fsmount)
{
	s32 fd = SC_ARG(0);
	u64 k = fd_key(fd);
	if (ovl_fds.lookup(&k)) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		fd_call.update(&tid, &fd);
	}
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fsmount)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	s32 *fs_fd = fd_call.lookup(&tid);
	if (!fs_fd)
		return 0;
	s32 fd = *fs_fd;
	fd_call.delete(&tid);
	if (args->ret < 0)
		return 0;
	u64 k = fd_key(args->ret);
	u32 one = 1;
	ovl_fds.update(&k, &one);
	struct mount_event *e = mount_event_new(MK_FSMOUNT, fd);
	if (e) {
		e->ret = args->ret;
		mount_event_send(e, 0);
	}
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_move_mount)
{
	/* (from_dfd, from_pathname, to_dfd, to_pathname, flags) */
	s32 fd = SC_ARG(0);
	u64 k = fd_key(fd);
	if (!ovl_fds.lookup(&k))
		return 0;
	struct mount_event *e = mount_event_new(MK_MOVE_MOUNT, fd);
	if (e) {
		bpf_probe_read_user_str(e->dir, sizeof(e->dir), (void *)SC_ARG(3));
		mount_event_send(e, 0);
	}
	return 0;
}
#endif

#ifdef HOOK_renames
/* A directory may have moved: every cached directory answer is void.
 * (Any rename: the syscall's exit cannot tell a directory from a file.) */
static __always_inline void on_rename_exit(long ret)
{
	if (ret < 0)
		return;
	u32 idx = KS_RENAME_SEQ;
	u64 *seq = kstate.lookup(&idx);
	if (seq)
		__sync_fetch_and_add(seq, 1);
}

TRACEPOINT_PROBE(syscalls, sys_exit_rename)
{
	on_rename_exit(args->ret);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_renameat)
{
	on_rename_exit(args->ret);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_renameat2)
{
	on_rename_exit(args->ret);
	return 0;
}
#endif

#ifdef HOOK_fsync
TRACEPOINT_PROBE(syscalls, sys_enter_fsync)
{
	on_fsync_enter(args->fd, RK_FSYNC);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fsync)
{
	on_fsync_exit(args->ret);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fdatasync)
{
	on_fsync_enter(args->fd, RK_FDATASYNC);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fdatasync)
{
	on_fsync_exit(args->ret);
	return 0;
}
#endif


/* ==== function hooks ====================================================
 * Each is compiled in both flavours, fentry/fexit (KFUNC_PROBE) and
 * kprobe/kretprobe; probes.py attaches one of them, or the tracepoint
 * stand-in above, per hook, never two (bcc's autoload is off). */

/* fentry arguments are typed kernel pointers to the verifier, which then
 * refuses them as map keys or in arithmetic: copy them out as numbers. */
#define KARG(i) ({ u64 __v = 0; bpf_probe_read_kernel(&__v, sizeof(__v), &ctx[i]); __v; })

/* ---- ovl_copy_up_flags(struct dentry *dentry, int flags) ----------------
 * Whether a copy-up really happened, and of what, is read from the
 * overlay inode before and after: OVL_I(inode)->__upperdentry (has an
 * upper) and OVL_UPPERDATA in OVL_I(inode)->flags (its data is upper;
 * clear after a metadata-only copy-up). */
#ifdef FN_copy_up
struct copyup_state { u64 inode; u64 start_ns; u64 size; u32 slot; u32 gen; u32 flags; u32 before; };
BPF_HASH(copyup_inflight, u32, struct copyup_state, 4096);   /* tid -> copy-up */

#define UP_HAS_UPPER 1
#define UP_DATA 2
static __always_inline u32 ovl_upper_state(void *inode)
{
	void *oi = inode - OFF_ovl_inode_vfs_inode;
	u64 upper, flags;
	KREAD(upper, oi, ovl_inode___upperdentry);
	KREAD(flags, oi, ovl_inode_flags);
	return (upper ? UP_HAS_UPPER : 0) | ((flags >> K_OVL_UPPERDATA) & 1 ? UP_DATA : 0);
}

static __always_inline int upper_has_data(u32 st)
{
	return (st & (UP_HAS_UPPER | UP_DATA)) == (UP_HAS_UPPER | UP_DATA);
}

static __always_inline void on_copy_up_enter(void *dentry, u32 flags)
{
	u64 sb = 0, inode = 0;
	u32 dev = 0, mode = 0;
	KREAD(sb, dentry, dentry_d_sb);
	if (!sb)
		return;
	KREAD(dev, sb, super_block_s_dev);
	struct slot_ref *ov = ovl_devs.lookup(&dev);
	if (!ov || !slot_alive(ov->slot, ov->gen))
		return;
	KREAD(inode, dentry, dentry_d_inode);
	if (!inode)
		return;
	KREAD(mode, inode, inode_i_mode);
	if ((mode & 0170000) != 0100000)      /* regular files, like the estimate */
		return;
	u32 before = ovl_upper_state((void *)inode);
	if (upper_has_data(before))
		return;                           /* nothing to copy: most calls */
	struct copyup_state cs = { .inode = inode, .start_ns = bpf_ktime_get_ns(),
	                           .slot = ov->slot, .gen = ov->gen, .flags = flags,
	                           .before = before };
	KREAD(cs.size, inode, inode_i_size);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	copyup_inflight.update(&tid, &cs);
}

static __always_inline void on_copy_up_return(s64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct copyup_state *cs = copyup_inflight.lookup(&tid);
	if (!cs)
		return;
	struct ovl_stats *s = slot_alive(cs->slot, cs->gen) ? slot_stats(cs->slot) : 0;
	if (s && ret < 0) {
		__sync_fetch_and_add(&s->copy_up_failures, 1);
	} else if (s) {
		u32 after = ovl_upper_state((void *)cs->inode);
		int copied = (!(cs->before & UP_HAS_UPPER) && (after & UP_HAS_UPPER)) ||
		             (!upper_has_data(cs->before) && upper_has_data(after));
		if (copied) {
			__sync_fetch_and_add(&s->copy_ups, 1);
			if (!upper_has_data(after))
				__sync_fetch_and_add(&s->copy_ups_metadata_only, 1);   /* metacopy: data stays below */
			else if (!(cs->flags & K_O_TRUNC))
				__sync_fetch_and_add(&s->copy_up_bytes, cs->size);   /* O_TRUNC copies no data */
			u64 ns = bpf_ktime_get_ns() - cs->start_ns;
			__sync_fetch_and_add(&s->copy_up_ns, ns);
			/* bpf_log2l(v) is floor(log2(v)) + 1, and 1 for 0 */
			u32 b = bpf_log2l(ns / 1000) - 1;
			if (b >= COPYUP_LAT_SLOTS)
				b = COPYUP_LAT_SLOTS - 1;
			/* clang drops the mask below after the clamp, and 6.1's
			 * verifier loses the clamp's bounds: keep the mask */
			asm volatile("" : "+r"(b));
			__sync_fetch_and_add(&s->copy_up_latency[b & (COPYUP_LAT_SLOTS - 1)], 1);
		}
	}
	copyup_inflight.delete(&tid);
}

KFUNC_PROBE(ovl_copy_up_flags, void *dentry, void *flags)
{
	on_copy_up_enter((void *)KARG(0), (u32)KARG(1));
	return 0;
}

KRETFUNC_PROBE(ovl_copy_up_flags, void *dentry, void *flags, void *ret)
{
	on_copy_up_return((s32)(s64)ret);
	return 0;
}

int kprobe__ovl_copy_up_flags(struct pt_regs *ctx)
{
	on_copy_up_enter((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx));
	return 0;
}

int kretprobe__ovl_copy_up_flags(struct pt_regs *ctx)
{
	on_copy_up_return((s32)PT_REGS_RC(ctx));
	return 0;
}
#endif

/* ---- sync_filesystem(struct super_block *sb) -----------------------------
 * Nests: syncfs(overlay fd) -> sync_filesystem(overlay sb) -> ovl_sync_fs
 * -> sync_filesystem(upper sb); an overlay's umount runs the same after the
 * syscall (task work).  Seen only inside a flush we track. */
#ifdef FN_sync_fs
#define SFS_DEPTH 4
struct sfs_frame { u64 sb; u32 dev; u32 errseq0; u32 upper; u32 pad; };
struct sfs_stack { u32 depth; u32 pad; struct sfs_frame f[SFS_DEPTH]; };
BPF_HASH(sfs_inflight, u32, struct sfs_stack, 1024);         /* tid -> frames */

#define ERRSEQ_SEEN (1U << 12)

/* frame d (< SFS_DEPTH): the barrier keeps the mask that the verifier
 * needs, which clang would drop after the range check */
static __always_inline struct sfs_frame *sfs_frame_at(struct sfs_stack *stk, u32 d)
{
	asm volatile("" : "+r"(d));
	return &stk->f[d & (SFS_DEPTH - 1)];
}

static __always_inline void on_sync_fs_enter(void *sb)
{
	struct flush_state *st = current_flush();
	if (!st)
		return;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sfs_stack *stk = sfs_inflight.lookup(&tid);
	if (!stk) {
		struct sfs_stack zero = {};
		sfs_inflight.update(&tid, &zero);
		stk = sfs_inflight.lookup(&tid);
		if (!stk)
			return;
	}
	u32 d = stk->depth;
	stk->depth = d + 1;
	if (d >= SFS_DEPTH)
		return;
	struct sfs_frame *f = sfs_frame_at(stk, d);
	f->sb = (u64)sb;
	f->dev = 0;
	KREAD(f->dev, sb, super_block_s_dev);
	f->errseq0 = 0;
	KREAD(f->errseq0, sb, super_block_s_wb_err);
	u32 dev = f->dev;
	f->upper = upper_devs.lookup(&dev) ? 1 : 0;
	if (f->upper) {
		st->synced_dev = dev;
		st->sb_errseq0 = f->errseq0;
	}
}

static __always_inline void on_sync_fs_return(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sfs_stack *stk = sfs_inflight.lookup(&tid);
	if (!stk || !stk->depth)
		return;
	u32 d = stk->depth - 1;
	stk->depth = d;
	struct flush_state *st = flushes.lookup(&tid);
	if (d < SFS_DEPTH && st) {
		struct sfs_frame *f = sfs_frame_at(stk, d);
		if (f->upper) {
			u32 errseq = 0;
			KREAD(errseq, f->sb, super_block_s_wb_err);
			st->sb_errseq = errseq;
			if ((errseq ^ f->errseq0) & ~ERRSEQ_SEEN) {
				st->sb_err_advanced = 1;
				u32 dev = f->dev;
				struct slot_ref *u = upper_devs.lookup(&dev);
				struct ovl_stats *s = u ? slot_stats(u->slot) : 0;
				if (s)
					__sync_fetch_and_add(&s->sb_errseq_advances, 1);
			}
		}
	}
	if (d)
		return;
	sfs_inflight.delete(&tid);
	if (!st || st->kind != FLUSH_UMOUNT || !st->exit_ns)
		return;
	/* The umount's flush is over: say so now, no need to wait for its
	 * writeback to go quiet. */
	u64 now = bpf_ktime_get_ns();
	flush_last.update(&st->id, &now);
	struct event *e = events.ringbuf_reserve(sizeof(struct event));
	if (e) {
		event_init_flush(e, EV_FLUSH_DONE, st);
		e->end_ns = now;
		events.ringbuf_submit(e, 0);
	} else {
		count(CNT_EVENTS_DROPPED);
	}
	flushes.delete(&tid);
}

KFUNC_PROBE(sync_filesystem, void *sb)
{
	on_sync_fs_enter((void *)KARG(0));
	return 0;
}

KRETFUNC_PROBE(sync_filesystem, void *sb, void *ret)
{
	on_sync_fs_return();
	return 0;
}

int kprobe__sync_filesystem(struct pt_regs *ctx)
{
	on_sync_fs_enter((void *)PT_REGS_PARM1(ctx));
	return 0;
}

int kretprobe__sync_filesystem(struct pt_regs *ctx)
{
	on_sync_fs_return();
	return 0;
}
#endif

/* ---- __mark_inode_dirty(struct inode *inode, int flags) ---------------- */
#ifdef FN_inode_dirty
KFUNC_PROBE(__mark_inode_dirty, void *inode, void *flags)
{
	on_inode_dirty((void *)KARG(0), (u32)KARG(1));
	return 0;
}

int kprobe____mark_inode_dirty(struct pt_regs *ctx)
{
	on_inode_dirty((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx));
	return 0;
}
#endif

/* ---- __filemap_set_wb_err(struct address_space *mapping, int err) --------
 * Stands in for errseq_set(), which no mechanism can hook (notrace). */
#ifdef FN_wb_error
KFUNC_PROBE(__filemap_set_wb_err, void *mapping, void *err)
{
	on_wb_error((void *)KARG(0), -(s32)KARG(1));
	return 0;
}

int kprobe____filemap_set_wb_err(struct pt_regs *ctx)
{
	on_wb_error((void *)PT_REGS_PARM1(ctx), -(s32)PT_REGS_PARM2(ctx));
	return 0;
}
#endif
