package dnsmx

import (
	"errors"
	"testing"
)

func TestParseAddressLiteral(t *testing.T) {
	for _, c := range []struct {
		in   string
		want error
	}{
		{"[192.0.2.1]", nil},
		{"[IPv6:2001:db8::1]", nil},
		{"[ipv6:2001:DB8::1]", nil},
		{"[IPv6:2001:db8:1:2:3:4:5:6]", nil},         // IPv6-full
		{"[IPv6:1:2:3:4:5:6::]", nil},                // six groups beside "::"
		{"[IPv6:1:2:3::4:5:6]", nil},                 // six groups beside "::"
		{"[IPv6:1:2:3:4:5:6:7::]", ErrLiteralSyntax}, // "::" for one group: not RFC 5321
		{"[IPv6:1:2:3:4::5:6:7]", ErrLiteralSyntax},
		{"[IPv6:1:2:3:4:5:6:192.0.2.1]", nil}, // IPv6v4-full
		{"[IPv6:::ffff:192.0.2.1]", nil},      // IPv6v4-comp
		{"[IPv6:1:2:3:4::192.0.2.1]", nil},    // four groups beside "::"
		{"[IPv6:1:2:3:4:5::192.0.2.1]", ErrLiteralSyntax},
		{"[IPv6:fe80::1%eth0]", ErrLiteralSyntax},
		{"[IPv6:192.0.2.1]", ErrLiteralSyntax},
		{"[2001:db8::1]", ErrLiteralSyntax}, // no tag
		{"[192.0.2]", ErrLiteralSyntax},
		{"[x-tag:whatever]", ErrLiteralSyntax},
		{"192.0.2.1", ErrLiteralSyntax},
		{"[]", ErrLiteralSyntax},
		{"[0.0.0.0]", ErrLiteralNotUnicast},
		{"[IPv6:::]", ErrLiteralNotUnicast},
		{"[224.0.0.1]", ErrLiteralNotUnicast},
		{"[255.255.255.255]", ErrLiteralNotUnicast},
		{"[IPv6:ff02::1]", ErrLiteralNotUnicast},
		{"[IPv6:::ffff:0.0.0.0]", ErrLiteralNotUnicast},
		{"[127.0.0.1]", nil}, // loopback is an address a server can be at
	} {
		_, err := ParseAddressLiteral(c.in)
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("ParseAddressLiteral(%q) = %v, want %v", c.in, err, c.want)
		}
	}
}
