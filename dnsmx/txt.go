package dnsmx

import (
	"context"
	"strings"

	"github.com/miekg/dns"
)

// LookupTXT returns the TXT records at name, one string per record (its
// character-strings joined without separators, as RFC 6376 §3.6.2.2 and
// RFC 8461 §3.1 read them, and as net.LookupTXT returns them). CNAMEs are
// followed and answers cached like those of LookupMX.
//
// A name with no TXT records — NXDOMAIN or NODATA — gives no records and no
// error: for the policies looked up this way (MTA-STS, TLS reporting) both
// mean "not published". Every error is a temporary *Error (SERVFAIL,
// timeout, network), or a permanent one for a name that cannot be a
// domain.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	fqdn, lit, err := normalize(name)
	if err != nil {
		return nil, err
	}
	if lit.IsValid() {
		return nil, permanent(name, CodeNoSuchDomain, "an address literal has no TXT records")
	}
	rrs, _, err := r.resolve(ctx, fqdn, dns.TypeTXT)
	if err != nil {
		return nil, onDomain(err, hostName(fqdn), "")
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}
