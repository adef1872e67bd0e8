#ifndef PFP_DETAIL_TASK_TABLE_HPP
#define PFP_DETAIL_TASK_TABLE_HPP

// The process pool's record of the tasks of a run: every task pulled from the feed and not yet
// delivered, by id, with its Result; and the pending ones (in no worker's queue: retried, taken
// back, or left by a worker that died before it began them) in the order they are to begin.

#include <pfp/detail/feed.hpp>
#include <pfp/detail/wire.hpp>
#include <pfp/result.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <vector>

namespace pfp {
namespace detail {

class TaskTable {
 public:
  // A task pulled from the feed, or a run of them (Feed::pull_run), not yet all delivered; slots
  // are reused, tickets are not. Task k of a slot has id (ticket << run_bits) | k.
  struct Slot {
    Task task;                  // the first task's fn, and the payload of a single task
    Result result;              // a single task's Result, unless the feed keeps it (places)
    Result* places = nullptr;   // where the feed keeps the Results of a run
    std::uint64_t seq = 0;      // the first task's
    std::uint32_t generation = 0;
    std::uint32_t count = 1;        // tasks in it
    std::uint32_t outstanding = 0;  // tasks of it not yet delivered
  };

  // A ticket is (generation << slot_bits) | slot, never reused within a run; a task's id is its
  // slot's ticket shifted by run_bits plus its place in the slot's run.
  static constexpr unsigned slot_bits = 20;
  static constexpr std::uint64_t slot_mask = (std::uint64_t{1} << slot_bits) - 1;

  std::deque<std::uint64_t> pending;  ///< ids in no worker's queue, in the order they are to begin
  std::size_t live = 0;               ///< tasks pulled and not yet delivered
  std::uint64_t next_seq = 0;         ///< the seq of the next task pulled

  // A fresh slot for count tasks starting at seq next_seq; returns its ticket.
  std::uint64_t new_slot(std::uint32_t count) {
    std::uint32_t index;
    if (!free_slots_.empty()) {
      index = free_slots_.back();
      free_slots_.pop_back();
    } else {
      index = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    live += count;
    Slot& slot = slots_[index];
    slot.seq = next_seq;
    next_seq += count;
    slot.count = slot.outstanding = count;
    slot.places = nullptr;
    ++slot.generation;
    return (std::uint64_t{slot.generation} << slot_bits) | index;
  }

  /// Whether a new slot can be made (ids must stay unique within a run).
  bool has_room() const noexcept { return !free_slots_.empty() || slots_.size() <= slot_mask; }

  /// A task of `id` is delivered: its slot is free once every task of it is.
  void release(std::uint64_t id) {
    --live;
    Slot& slot = slot_of(id);
    if (--slot.outstanding == 0) free_slots_.push_back(static_cast<std::uint32_t>((id >> run_bits) & slot_mask));
  }

  Slot& slot_of(std::uint64_t id) { return slots_[static_cast<std::size_t>((id >> run_bits) & slot_mask)]; }
  const Slot& slot_of(std::uint64_t id) const { return slots_[static_cast<std::size_t>((id >> run_bits) & slot_mask)]; }
  static std::uint32_t place_of(std::uint64_t id) noexcept { return static_cast<std::uint32_t>(id & (max_run - 1)); }
  std::uint64_t seq_of(std::uint64_t id) { return slot_of(id).seq + place_of(id); }
  Result& result_of(std::uint64_t id) {
    Slot& slot = slot_of(id);
    return slot.places ? slot.places[place_of(id)] : slot.result;
  }

  int priority_of(std::uint64_t id) { return slot_of(id).task.priority; }

  // Whether pending task a goes before b: higher priority first, then the order they were pulled.
  bool goes_before(std::uint64_t a, std::uint64_t b) {
    const int pa = priority_of(a), pb = priority_of(b);
    return pa != pb ? pa > pb : seq_of(a) < seq_of(b);
  }

  // Puts tasks that are in no worker's queue (retried, taken back, or held by a worker that
  // died before it began them) with the pending ones, in the order they are to begin.
  void hand_back(std::uint64_t id) {
    pending.insert(std::upper_bound(pending.begin(), pending.end(), id,
                                     [this](std::uint64_t a, std::uint64_t b) { return goes_before(a, b); }),
                    id);
  }
  void hand_back(std::vector<std::uint64_t>& ids) {
    if (ids.empty()) return;
    auto before = [this](std::uint64_t a, std::uint64_t b) { return goes_before(a, b); };
    std::stable_sort(ids.begin(), ids.end(), before);
    if (pending.empty() || goes_before(pending.back(), ids.front())) {
      pending.insert(pending.end(), ids.begin(), ids.end());
      return;
    }
    std::deque<std::uint64_t> merged;
    std::merge(pending.begin(), pending.end(), ids.begin(), ids.end(), std::back_inserter(merged), before);
    pending.swap(merged);
  }

 private:
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_slots_;
};

}  // namespace detail
}  // namespace pfp

#endif  // PFP_DETAIL_TASK_TABLE_HPP
