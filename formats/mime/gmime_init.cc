#include "formats/mime/renderer.h"

#include <gmime/gmime.h>

#include <mutex>

namespace wxa::mime {

void InitGMime() {
  static std::once_flag once;
  std::call_once(once, [] { g_mime_init(); });
}

}  // namespace wxa::mime
