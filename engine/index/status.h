// `wxarchiver status`: what the index says, for people (text) and scripts (JSON).
#pragma once

#include <string>

#include "engine/index/index.h"

namespace wxa::index {

std::string StatusText(const std::string& dir, const IndexStats& s);
std::string StatusJson(const std::string& dir, const IndexStats& s);

}  // namespace wxa::index
