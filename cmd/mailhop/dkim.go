package main

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/miekg/dns"

	"github.com/mailhop/mailhop/internal/idn"
	"github.com/mailhop/mailhop/relay/dkimsign"
)

const dkimUsage = `Usage:
  mailhop dkim keygen --domain D --selector S --out FILE [--type rsa|ed25519] [--bits 2048]

Writes a new private key to FILE (PEM, mode 0600; an existing file is never
overwritten) and prints the DNS TXT record to publish at S._domainkey.D.
Use the key in a [[dkim]] entry: domain = D, selector = S, key_file = FILE.
`

// cmdDKIM runs `mailhop dkim SUBCOMMAND`.
func cmdDKIM(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "keygen" {
		if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
			fmt.Fprint(stdout, dkimUsage)
			return exitOK
		}
		fmt.Fprint(stderr, dkimUsage)
		return exitUsage
	}
	return cmdDKIMKeygen(args[1:], stdout, stderr)
}

// maxRSABits: RFC 8301 §3.2 only obliges verifiers to handle keys up to
// 4096 bits.
const maxRSABits = 4096

func cmdDKIMKeygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dkim keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	domain := fs.String("domain", "", "the signing domain (d=)")
	selector := fs.String("selector", "", "the selector (s=)")
	out := fs.String("out", "", "file to write the private key to (must not exist)")
	typ := fs.String("type", "rsa", `key type: "rsa" or "ed25519"`)
	bits := fs.Int("bits", 2048, "RSA key size")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return flagsFailed(err)
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "mailhop dkim keygen: "+format+"\n", a...)
		return exitUsage
	}
	d, idnOK := signingDomain(*domain)
	switch {
	case len(pos) > 0:
		return fail("unexpected argument %q", pos[0])
	case d == "":
		return fail("--domain is required")
	case !idnOK || !validName(d):
		return fail("--domain %q is not a domain name", *domain)
	case *selector == "":
		return fail("--selector is required")
	case !validName(*selector):
		return fail("--selector %q is not valid (letters, digits, '-' and '.')", *selector)
	case *out == "":
		return fail("--out is required")
	}

	var key crypto.Signer
	switch *typ {
	case "rsa":
		if *bits < dkimsign.MinRSABits || *bits > maxRSABits {
			return fail("--bits must be between %d and %d", dkimsign.MinRSABits, maxRSABits)
		}
		key, err = rsa.GenerateKey(rand.Reader, *bits)
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return fail(`--type must be "rsa" or "ed25519", not %q`, *typ)
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailhop dkim keygen: generating key: %v\n", err)
		return exitFail
	}
	pemBytes, err := dkimsign.MarshalPrivateKey(key)
	if err != nil {
		fmt.Fprintf(stderr, "mailhop dkim keygen: %v\n", err)
		return exitFail
	}
	rec, err := dkimsign.KeyRecord(key.Public())
	if err != nil {
		fmt.Fprintf(stderr, "mailhop dkim keygen: %v\n", err)
		return exitFail
	}
	if err := writeNewFile(*out, pemBytes); err != nil {
		fmt.Fprintf(stderr, "mailhop dkim keygen: %v\n", err)
		return exitFail
	}

	name := *selector + "._domainkey." + d + "."
	fmt.Fprintf(stderr, "mailhop dkim keygen: wrote the %s private key to %s; publish this record at %s\n", *typ, *out, name)
	fmt.Fprintln(stdout, txtRecordLine(name, rec))
	return exitOK
}

// signingDomain is the d= a [[dkim]] entry with this domain signs with,
// lower-cased: a domain written in Unicode is its A-label (the Lookup
// profile of UTS #46, as the configuration keeps it), so the record is
// printed where verifiers look for it. ok is false for a domain that is no
// valid IDN.
func signingDomain(domain string) (d string, ok bool) {
	d = strings.TrimSuffix(domain, ".")
	a, err := idn.ALabel(d)
	if err != nil {
		return d, false
	}
	return a, true
}

// txtRecordLine formats a zone-file line for a TXT record, its value cut
// into quoted strings of at most 255 bytes (DNS joins them back).
func txtRecordLine(name, value string) string {
	var b strings.Builder
	b.WriteString(name + " IN TXT")
	for _, part := range dkimsign.SplitTXT(value) {
		b.WriteString(` "` + part + `"`)
	}
	return b.String()
}

// validName reports whether s is a host-style DNS name: labels of letters,
// digits and '-', separated by dots.
func validName(s string) bool {
	if _, ok := dns.IsDomainName(s); !ok || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// writeNewFile creates path with mode 0600 and writes data durably; it
// refuses to replace an existing file.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
