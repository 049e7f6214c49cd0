package smtperr_test

import (
	"io"
	"testing"

	"github.com/mailhop/mailhop/relay/smtperr"
)

func TestSMTPErrClassify(t *testing.T) {
	for _, tc := range []struct {
		e    smtperr.Error
		temp bool
		st   string
	}{
		{smtperr.Error{Code: 550, Enhanced: "5.1.1"}, false, "5.1.1"},
		{smtperr.Error{Code: 451, Enhanced: "5.1.1"}, true, "4.0.0"},
		{smtperr.Error{Code: 0, Enhanced: "5.1.10"}, false, "5.1.10"},
		{smtperr.Error{Code: 0, Enhanced: "4.4.7"}, true, "4.4.7"},
		{smtperr.Error{}, true, "4.0.0"},
	} {
		if tc.e.Temporary() != tc.temp || tc.e.Status() != tc.st {
			t.Errorf("%+v: temporary %v status %s", tc.e, tc.e.Temporary(), tc.e.Status())
		}
	}
	if e := smtperr.Classify(io.EOF); !e.Temporary() {
		t.Error("an unknown error must be temporary")
	}
}
