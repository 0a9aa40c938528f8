// select.wgsl: workgroup top-k selection, shared by scan.wgsl and merge.wgsl.
//
// Bindings: none. This file declares workgroup memory only; the kernel that includes it owns
// every binding.
//
// Host-substituted constants (see src/engine/gpu/shaders.rs): WG_SIZE, LIST_LEN, POOL_LEN,
// NONE_SLOT.
//
// How it works: each workgroup keeps a pool of POOL_LEN (key, slot) entries. The first
// LIST_LEN hold the best candidates so far, sorted; the rest is a pending buffer that threads
// append to with an atomic counter. A candidate is appended only when it beats the "bar", the
// keep-th best entry of the list, so after the first few rounds almost nothing is appended and
// the scan runs at memory speed. When the buffer could overflow in the next round, the whole
// pool is bitonic-sorted (rare) and the bar is raised. Keys: smaller is better; equal keys are
// ordered by lower slot, which is the ranking's tie-break.

const KEY_EMPTY: f32 = 3.4028235e38;

var<workgroup> pool_key: array<f32, POOL_LEN>;
var<workgroup> pool_slot: array<u32, POOL_LEN>;
var<workgroup> pending: atomic<u32>;
var<workgroup> pending_seen: u32;
var<workgroup> bar_key: f32;
var<workgroup> bar_slot: u32;

fn entry_less(key_a: f32, slot_a: u32, key_b: f32, slot_b: u32) -> bool {
    return key_a < key_b || (key_a == key_b && slot_a < slot_b);
}

// Uniform control flow only.
fn select_init(lid: u32) {
    for (var i = lid; i < POOL_LEN; i += WG_SIZE) {
        pool_key[i] = KEY_EMPTY;
        pool_slot[i] = NONE_SLOT;
    }
    if lid == 0u {
        atomicStore(&pending, 0u);
        bar_key = KEY_EMPTY;
        bar_slot = NONE_SLOT;
    }
    workgroupBarrier();
}

// Any thread, any control flow: at most one offer per thread per round, which is what bounds
// the pending buffer (see select_round_end).
fn select_offer(key: f32, slot: u32) {
    if entry_less(key, slot, bar_key, bar_slot) {
        let at = LIST_LEN + atomicAdd(&pending, 1u);
        pool_key[at] = key;
        pool_slot[at] = slot;
    }
}

fn pending_count(lid: u32) -> u32 {
    workgroupBarrier();
    if lid == 0u {
        pending_seen = atomicLoad(&pending);
    }
    return workgroupUniformLoad(&pending_seen);
}

// Uniform control flow only. Sorts when another round of WG_SIZE offers might not fit.
fn select_round_end(lid: u32, keep: u32) {
    if pending_count(lid) > POOL_LEN - LIST_LEN - WG_SIZE {
        select_sort(lid, keep);
    }
}

// Uniform control flow only. Leaves the best `keep` entries sorted in pool[0..keep].
fn select_finish(lid: u32, keep: u32) {
    if pending_count(lid) > 0u {
        select_sort(lid, keep);
    }
}

fn select_sort(lid: u32, keep: u32) {
    for (var size = 2u; size <= POOL_LEN; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var t = lid; t < POOL_LEN / 2u; t += WG_SIZE) {
                let lo = 2u * stride * (t / stride) + t % stride;
                let hi = lo + stride;
                let hi_first = entry_less(pool_key[hi], pool_slot[hi], pool_key[lo], pool_slot[lo]);
                let ascending = (lo & size) == 0u;
                if hi_first == ascending {
                    let k = pool_key[lo];
                    let s = pool_slot[lo];
                    pool_key[lo] = pool_key[hi];
                    pool_slot[lo] = pool_slot[hi];
                    pool_key[hi] = k;
                    pool_slot[hi] = s;
                }
            }
            workgroupBarrier();
        }
    }
    for (var i = LIST_LEN + lid; i < POOL_LEN; i += WG_SIZE) {
        pool_key[i] = KEY_EMPTY;
        pool_slot[i] = NONE_SLOT;
    }
    if lid == 0u {
        atomicStore(&pending, 0u);
        // An empty entry here leaves the bar at "accept everything", which is right while the
        // list holds fewer than `keep` candidates.
        bar_key = pool_key[keep - 1u];
        bar_slot = pool_slot[keep - 1u];
    }
    workgroupBarrier();
}
