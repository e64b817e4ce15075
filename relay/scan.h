/*
 * scan.h — a tolerant scanner for getUpdates answers and webhook bodies.
 *
 * Splits the "result" array of a getUpdates answer into the raw bytes of its
 * elements and finds each element's update_id, without decoding the JSON:
 * an element jansson would refuse (a \u0000 inside a string, invalid UTF-8,
 * a lone surrogate) is still stored, and the database parks it with the
 * reason.  Only structure is followed: strings (with their escapes) and the
 * depth of brackets and braces.
 */
#ifndef REGSTAGE_RELAY_SCAN_H
#define REGSTAGE_RELAY_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* called once per element, in order; elem is not NUL-terminated */
typedef void (*ScanElementFn) (void *arg, const char *elem, size_t len);

/*
 * The elements of the top-level member "result" (an array) of the JSON
 * object in data.  Returns how many were found, or -1 when data is not an
 * object with a well-formed "result" array (elements found before the
 * malformed part may have been passed to fn: the caller drops them).
 */
int			scan_result_array(const char *data, size_t len, ScanElementFn fn, void *arg);

/*
 * The update_id of one update: its top-level member "update_id", an integer
 * (optional minus, digits, within int64).  False when there is none.
 */
bool		scan_update_id(const char *elem, size_t len, int64_t *update_id);

#endif
