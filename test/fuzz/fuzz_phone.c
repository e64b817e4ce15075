/*
 * libFuzzer target: inputcheck_phone(), the rule behind validate_phone()
 * and regstage.normalize_phone().
 *
 * Properties: nothing is written past INPUTCHECK_PHONE_BUFSIZE; an
 * accepted number is "+" followed by 7-15 digits, the first not 0; it is
 * the input's own digits in order (an international prefix "00" dropped,
 * a Russian trunk "8" of an 11-digit number read as "7"): no digit lost
 * or added; "too many digits" means more than 15 after the prefix.
 */
#include "fuzz_check.h"
#include "inputcheck.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *in = fuzz_copy(data, size);
	char		out[INPUTCHECK_PHONE_BUFSIZE + 8];
	char		expect[64];
	size_t		ne = 0;			/* digits of the number, prefix dropped */
	size_t		i = 0;
	int			plus = 0;
	InputcheckPhone r;

	/* what the number's digits are, read independently of the code under test */
	while (i < size && in[i] == ' ')
		i++;
	if (i < size && in[i] == '+')
	{
		plus = 1;
		i++;
	}
	for (; i < size; i++)
		if (in[i] >= '0' && in[i] <= '9')
		{
			if (ne < sizeof(expect) - 1)
				expect[ne] = in[i];
			ne++;
		}
	expect[ne < sizeof(expect) - 1 ? ne : sizeof(expect) - 1] = '\0';
	if (!plus && ne > 2 && expect[0] == '0' && expect[1] == '0')
	{
		memmove(expect, expect + 2, strlen(expect + 2) + 1);
		ne -= 2;
	}
	else if (!plus && ne == 11 && expect[0] == '8')
		expect[0] = '7';

	memset(out, 0x5A, sizeof(out));
	r = inputcheck_phone(in, size, out);
	for (size_t k = INPUTCHECK_PHONE_BUFSIZE; k < sizeof(out); k++)
		PROPERTY(out[k] == 0x5A, "wrote past INPUTCHECK_PHONE_BUFSIZE");
	if (r == PHONE_TOO_MANY_DIGITS)
		PROPERTY(ne > INPUTCHECK_PHONE_MAX_DIGITS, "refused as too long with %zu digits", ne);
	if (r == PHONE_OK)
	{
		size_t		nd;

		PROPERTY(memchr(out, '\0', INPUTCHECK_PHONE_BUFSIZE) != NULL, "output not NUL-terminated");
		nd = strlen(out) - 1;
		PROPERTY(out[0] == '+', "output \"%s\" does not start with +", out);
		PROPERTY(nd >= INPUTCHECK_PHONE_MIN_DIGITS && nd <= INPUTCHECK_PHONE_MAX_DIGITS,
				 "output \"%s\" has %zu digits", out, nd);
		PROPERTY(strspn(out + 1, "0123456789") == nd && out[1] != '0', "output \"%s\" is not +<digits>", out);
		PROPERTY(strcmp(out + 1, expect) == 0, "input digits %s normalised to %s", expect, out);
	}
	free(in);
	return 0;
}
