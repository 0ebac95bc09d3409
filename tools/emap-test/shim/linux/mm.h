/* SPDX-License-Identifier: GPL-2.0-only */
/* User-space stand-in: everything is in kshim.h. */
#include "../kshim.h"
