/*
 * tgfile.c — what the Bot API says about a file, checked in plain C.
 *
 * The file_path of a getFile answer goes into the download URL (never
 * into a file name: that is ours), so it must stay a relative path below
 * <api>/file/bot<token>/.
 */
#include <string.h>

#include "tgfile.h"

const char *
sniff_extension(const unsigned char *h, size_t len)
{
	if (len >= 3 && h[0] == 0xFF && h[1] == 0xD8 && h[2] == 0xFF)
		return "jpg";
	if (len >= 8 && memcmp(h, "\x89PNG\r\n\x1a\n", 8) == 0)
		return "png";
	if (len >= 5 && memcmp(h, "%PDF-", 5) == 0)
		return "pdf";
	if (len >= 4 && memcmp(h, "GIF8", 4) == 0)
		return "gif";
	if (len >= 12 && memcmp(h, "RIFF", 4) == 0 && memcmp(h + 8, "WEBP", 4) == 0)
		return "webp";
	if (len >= 12 && memcmp(h + 4, "ftyp", 4) == 0 &&
		(memcmp(h + 8, "heic", 4) == 0 || memcmp(h + 8, "heix", 4) == 0 ||
		 memcmp(h + 8, "mif1", 4) == 0))
		return "heic";
	return "bin";
}

/*
 * 1-512 bytes of letters, digits, "_", "-", "." and "/", not starting with
 * "/", with no ".." and no empty path segment.
 */
bool
file_path_is_safe(const char *p, size_t len)
{
	if (len == 0 || len > TGFILE_PATH_MAX || p[0] == '/')
		return false;
	for (size_t i = 0; i < len; i++)
	{
		char		c = p[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  c == '_' || c == '-' || c == '.' || c == '/'))
			return false;
		if (i > 0 && ((c == '.' && p[i - 1] == '.') || (c == '/' && p[i - 1] == '/')))
			return false;
	}
	return true;
}
