module example.com/docextract-receiver

go 1.19
