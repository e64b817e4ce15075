/*
 * libFuzzer target: file_path_is_safe() and sniff_extension(), which
 * botapi.c applies to getFile's file_path and to a download's first bytes.
 *
 * Properties: an accepted file_path is 1-512 bytes, does not start with
 * "/", has no "..", "//", NUL, control, non-ASCII or URL-special
 * character ("%", "?", "#", "\"); sniffing reads only the len bytes it
 * is given (an exact-size heap copy: AddressSanitizer sees any byte
 * past it), decides from the first 12 bytes alone, and names one of the
 * known extensions.
 */
#include "fuzz_check.h"
#include "tgfile.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *in = fuzz_copy(data, size);
	const char *ext = sniff_extension((const unsigned char *) in, size);
	static const char *const known[] = {"jpg", "png", "pdf", "gif", "webp", "heic", "bin"};
	int			is_known = 0;

	for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
		if (ext == known[k] || strcmp(ext, known[k]) == 0)
			is_known = 1;
	PROPERTY(is_known, "unknown extension \"%s\"", ext);
	PROPERTY(strcmp(ext, sniff_extension((const unsigned char *) in, size < 12 ? size : 12)) == 0,
			 "extension depends on bytes past the 12th");

	if (file_path_is_safe(in, size))
	{
		PROPERTY(size >= 1 && size <= TGFILE_PATH_MAX, "file_path of %zu bytes", size);
		PROPERTY(in[0] != '/', "file_path starts with /");
		for (size_t i = 0; i < size; i++)
		{
			unsigned char c = (unsigned char) in[i];

			PROPERTY(c > 0x20 && c < 0x7F, "file_path with byte 0x%02X", c);
			PROPERTY(strchr("%?#\\", c) == NULL, "file_path with \"%c\"", c);
			PROPERTY(i == 0 || !((c == '.' || c == '/') && in[i - 1] == c), "file_path with \"%c%c\"", c, c);
		}
	}
	free(in);
	return 0;
}
