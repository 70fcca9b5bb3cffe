module github.com/dwcp-selector/dwcp-selector/clients/go

go 1.19
