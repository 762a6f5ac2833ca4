// Raw LMDB access to an index directory, for tests that write what Index
// itself never would: an older schema, a half-finished upgrade, someone
// else's database.
#pragma once

#include <gtest/gtest.h>
#include <lmdb.h>

#include <cstdint>
#include <functional>
#include <string>

#include "engine/index/codec.h"
#include "engine/index/index.h"

namespace wxa::index::raw {

// fn(txn) inside one write transaction on the LMDB environment at `path`
// (created if need be), committed after. map_size 0 keeps the file's.
inline void WithRawIndex(const std::string& path, const std::function<void(MDB_txn*)>& fn,
                         size_t map_size = 0) {
  MDB_env* env;
  ASSERT_EQ(mdb_env_create(&env), 0);
  ASSERT_EQ(mdb_env_set_maxdbs(env, 8), 0);
  if (map_size != 0) {
    ASSERT_EQ(mdb_env_set_mapsize(env, map_size), 0);
  }
  ASSERT_EQ(mdb_env_open(env, path.c_str(), 0, 0644), 0);
  MDB_txn* t;
  ASSERT_EQ(mdb_txn_begin(env, nullptr, 0, &t), 0);
  fn(t);
  ASSERT_EQ(mdb_txn_commit(t), 0);
  mdb_env_close(env);
}

inline void RawPut(MDB_txn* t, MDB_dbi db, const std::string& k, const std::string& v) {
  MDB_val mk{k.size(), const_cast<char*>(k.data())}, mv{v.size(), const_cast<char*>(v.data())};
  ASSERT_EQ(mdb_put(t, db, &mk, &mv, 0), 0);
}

// A delivery's key in schema 1's `deliveries` table: sink (2 bytes,
// big-endian), mailbox id (4), item (16).
inline std::string V1Key(const DeliveryKey& k, uint32_t mailbox_id) {
  std::string key{static_cast<char>(k.sink >> 8), static_cast<char>(k.sink & 0xff)};
  PutU32BE(&key, mailbox_id);
  return key + std::string(k.item.View());
}

}  // namespace wxa::index::raw
