/*
 * s3_xml.h — the small XML reader the S3 client needs (pure C).
 *
 * S3 answers in XML: ListObjectsV2 pages and <Error><Code/><Message/>
 * bodies.  This reader walks elements and reports each closing element with
 * its path from the root ("ListBucketResult/Contents/Key") and, for an
 * element without child elements, its decoded text.  No DTDs (a <!DOCTYPE
 * is refused, so no entity expansion), no allocation: decoded text goes
 * into a caller-supplied scratch buffer at least as long as the input.
 */
#ifndef REGSTAGE_S3_XML_H
#define REGSTAGE_S3_XML_H

#include <stdbool.h>
#include <stddef.h>

#define S3_XML_MAX_DEPTH 32
#define S3_XML_MAX_PATH 512

/*
 * Called at every closing element.  text is NUL-terminated (NULL for an
 * element that had child elements); a non-zero return stops the parse and
 * becomes its result.
 */
typedef int (*S3XmlCallback) (void *arg, const char *path, const char *text, size_t textlen);

/* 0 on success, -1 if the input is not well-formed (or too deep), else the callback's value */
extern int	s3_xml_parse(const char *xml, size_t len, char *scratch, size_t scratchsz,
						 S3XmlCallback cb, void *arg);

#endif
