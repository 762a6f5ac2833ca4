// Runs tests/mime/check_composed.py (Python's `email`) over rendered
// messages and the composed items they should carry.
#pragma once

#include <string>
#include <vector>

#include "formats/mime/compose.h"

namespace wxa::mime::testing {

class PythonCheck {
 public:
  // Adds one message and what it should say.
  void Add(const ComposedItem& item, const std::string& bytes);
  // Writes everything to a temporary directory and runs the script. Returns
  // its output; *ok tells whether every message matched.
  std::string Run(bool* ok) const;
  size_t size() const { return files_.size(); }

 private:
  std::string json_ = "[";
  std::vector<std::string> files_;
  std::vector<std::string> bytes_;
};

}  // namespace wxa::mime::testing
