#include "formats/pst/pst_writer.h"
