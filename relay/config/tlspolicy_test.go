package config

import "testing"

func TestTLSPolicy_LevelPerDomain(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte(`hostname = "mx.example.com"
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
[delivery]
tls_policy = "encrypt"
dnssec_trusted_resolver = true
[[tls_policy]]
domains = ["Bank.Example.", "gov.example"]
level = "verify"
[[tls_policy]]
domains = ["signed.example"]
level = "dane"
`), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	for domain, want := range map[string]string{
		"bank.example": "verify", "BANK.example.": "verify", "gov.example": "verify",
		"signed.example": "dane", "other.example": "encrypt",
	} {
		if got := cfg.TLSLevelFor(domain); got != want {
			t.Errorf("TLSLevelFor(%q) = %q, want %q", domain, got, want)
		}
	}
	if cfg.Delivery.MTASTSPort != 443 || !cfg.Delivery.DNSSECTrustedResolver {
		t.Errorf("delivery = %+v", cfg.Delivery)
	}
}

func TestTLSPolicy_Defaults(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte("hostname = \"mx.example.com\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\nmode = \"relay\"\n"), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Delivery
	if d.TLSPolicy != TLSMay || d.ExtraRootsFile != "" || d.DNSSECTrustedResolver || d.MTASTSPort != DefaultMTASTSPort {
		t.Errorf("defaults: %+v", d)
	}
	if got := cfg.TLSLevelFor("any.example"); got != TLSMay {
		t.Errorf("TLSLevelFor = %q", got)
	}
}
