#include "data/bpe_model.h"

#include "data/byte_level.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <mutex>

namespace qtrain {

// (left id, right id) -> (rank, merged id): open addressing with linear probing, since the
// lookup sits in the innermost loop of encoding.
struct ByteLevelBpe::MergeTable {
  struct Slot {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t merged = -1;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  explicit MergeTable(size_t count) {
    size_t capacity = 16;
    while (capacity < count * 2) capacity *= 2;
    slots.resize(capacity);
    mask = capacity - 1;
  }

  static uint64_t key(int32_t left, int32_t right) {
    return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
  }
  size_t home(uint64_t k) const { return (k * 0x9E3779B97F4A7C15ull >> 20) & mask; }

  void assign(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    const uint64_t k = key(left, right);
    size_t i = home(k);
    while (slots[i].key != kEmpty && slots[i].key != k) i = (i + 1) & mask;
    slots[i] = {k, rank, merged};
  }
  const Slot* find(int32_t left, int32_t right) const {
    const uint64_t k = key(left, right);
    for (size_t i = home(k);; i = (i + 1) & mask) {
      if (slots[i].key == k) return &slots[i];
      if (slots[i].key == kEmpty) return nullptr;
    }
  }

  std::vector<Slot> slots;
  size_t mask = 0;
};

// Pre-token bytes -> ids, in shards with a lock each. A full shard starts over.
struct ByteLevelBpe::Cache {
  static constexpr size_t kShards = 16;
  static constexpr size_t kWordsPerShard = 8192;
  static constexpr size_t kMaxWordBytes = 256;  // longer pre-tokens are not cached (as tokenizers)

  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  Shard shards[kShards];
};

ByteLevelBpe::ByteLevelBpe(const std::unordered_map<std::string, int32_t>& vocab,
                           const std::vector<std::array<int32_t, 3>>& merges, Options options)
    : options_(options),
      merges_(std::make_unique<MergeTable>(merges.size())),
      cache_(std::make_unique<Cache>()) {
  const auto& chars = byte_level_chars();
  for (int byte = 0; byte < 256; ++byte) {
    if (const auto it = vocab.find(chars[byte]); it != vocab.end()) {
      byte_ids_[byte] = {it->second};
      byte_in_vocab_[byte] = true;
      continue;
    }
    if (!options_.byte_fallback) continue;
    // tokenizers falls back on the UTF-8 bytes of the byte-level character, all or none.
    std::vector<int32_t> fallback;
    for (char b : chars[byte]) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<unsigned char>(b));
      const auto it = vocab.find(name);
      if (it == vocab.end()) {
        fallback.clear();
        break;
      }
      fallback.push_back(it->second);
    }
    byte_ids_[byte] = std::move(fallback);
  }
  if (options_.ignore_merges) {
    std::string bytes;
    for (const auto& [token, id] : vocab) {
      if (from_byte_level(token, &bytes)) whole_words_.emplace(bytes, id);
    }
  }
  uint32_t rank = 0;
  for (const auto& [left, right, merged] : merges) merges_->assign(left, right, rank++, merged);
}

ByteLevelBpe::~ByteLevelBpe() = default;

void ByteLevelBpe::tokenize(std::string_view pre_token, std::vector<int64_t>* ids) const {
  if (pre_token.empty()) return;
  if (pre_token.size() == 1) {
    const auto byte = static_cast<unsigned char>(pre_token[0]);
    if (byte_in_vocab_[byte]) {
      ids->push_back(byte_ids_[byte][0]);
      return;
    }
  }
  const bool cacheable = pre_token.size() < Cache::kMaxWordBytes;
  Cache::Shard* shard = nullptr;
  std::string key;
  if (cacheable) {
    key.assign(pre_token);
    shard = &cache_->shards[std::hash<std::string>{}(key) % Cache::kShards];
    std::lock_guard<std::mutex> lock(shard->mutex);
    if (const auto it = shard->words.find(key); it != shard->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word;
  if (options_.ignore_merges) {
    if (const auto it = whole_words_.find(std::string(pre_token)); it != whole_words_.end()) {
      word.push_back(it->second);
    }
  }
  if (word.empty()) merge_word(pre_token, &word);
  ids->insert(ids->end(), word.begin(), word.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard->mutex);
    if (shard->words.size() >= Cache::kWordsPerShard) shard->words.clear();
    shard->words.emplace(std::move(key), std::move(word));
  }
}

namespace {

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  int32_t len;  // bytes covered; 0 once merged into its left neighbour
};

struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t merged;
};

// std::push_heap keeps the "largest" on top: make that the lowest rank, then the leftmost.
bool later(const Candidate& a, const Candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

}  // namespace

void ByteLevelBpe::merge_word(std::string_view pre_token, std::vector<int32_t>* ids) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  heap.clear();

  auto add = [&](int32_t id, int32_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, len});
  };
  // The order of tokenizers' BPE::merge_word: a pending unk goes in before the next character
  // found in the vocabulary (not before byte-fallback tokens), or at the end.
  int32_t unk_len = 0;
  for (char ch : pre_token) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte_in_vocab_[byte]) {
      if (unk_len > 0) add(options_.unk_id, unk_len);
      unk_len = 0;
      add(byte_ids_[byte][0], 1);
    } else if (!byte_ids_[byte].empty()) {
      for (int32_t id : byte_ids_[byte]) add(id, 1);
    } else if (options_.unk_id >= 0) {
      if (unk_len > 0 && !options_.fuse_unk) {
        add(options_.unk_id, unk_len);
        unk_len = 0;
      }
      unk_len += 1;
    }
  }
  if (unk_len > 0) add(options_.unk_id, unk_len);

  const auto count = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i + 1 < count; ++i) {
    if (const auto* m = merges_->find(symbols[i].id, symbols[i + 1].id)) {
      heap.push_back({m->rank, i, m->merged});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](const Candidate& c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end(), later);
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    // A stale candidate: the pair at this position changed since it was queued.
    const auto* m = merges_->find(left.id, right.id);
    if (!m || m->merged != top.merged) continue;
    left.id = top.merged;
    left.len += right.len;
    left.next = right.next;
    symbols[right_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* p = merges_->find(symbols[left.prev].id, left.id)) {
        push({p->rank, left.prev, p->merged});
      }
    }
    if (left.next >= 0) {
      if (const auto* n = merges_->find(left.id, symbols[left.next].id)) {
        push({n->rank, top.pos, n->merged});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

}  // namespace qtrain
