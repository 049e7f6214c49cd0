// Package mime7bit converts an 8-bit MIME message to 7-bit for a server
// that does not offer 8BITMIME (RFC 6152 §3, the RFC 1652 downgrade), as
// Postfix's smtp client does: every leaf body part holding 8-bit octets
// becomes quoted-printable, and what cannot be converted is refused
// (UnconvertibleError; delivery bounces it with 5.6.3). Has8bit and IsASCII
// tell whether a message or a header needs 8-bit transport at all.
//
// The message is read from storage (an io.ReaderAt) and never held in
// memory: Convert keeps only a list of byte ranges and rewritten part
// headers, and Conversion.WriteTo streams the result.
package mime7bit
