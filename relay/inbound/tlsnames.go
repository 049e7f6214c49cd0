package inbound

import (
	"crypto/tls"
	"strings"
)

// tls13Name returns "TLS1.3" style names for the Received field.
func tls13Name(v uint16) string {
	return strings.ReplaceAll(tls.VersionName(v), " ", "")
}

func cipherName(id uint16) string { return tls.CipherSuiteName(id) }
