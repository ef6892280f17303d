<#
.SYNOPSIS
  Export an hMailServer installation as JSON for `appliance import hmailserver --json FILE`.

.DESCRIPTION
  For installations on hMailServer's built-in database (SQL Server Compact), which Linux cannot
  read. Runs on the hMailServer machine, uses hMailServer's COM API (hMailServer.Application) and
  only reads: it changes nothing in hMailServer. It writes the tables the importer reads, with
  hMailServer's own table and column names, as
      {"format": "hmailserver-tables", "version": 1, "tables": {"hm_domains": [...], ...}}
  Copy the JSON and hMailServer's data directory (Settings > Directories > Data) to the Linux
  machine, then run `appliance import hmailserver --json export.json --data-dir DATA --out DIR`.

  UNTESTED: this project's test machines have no Windows and no hMailServer. The JSON it writes
  follows the format the importer's tests feed it (tests/hmailserver/installation.py).

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File hmailserver-export.ps1 -Password (Read-Host) -Out export.json
#>
param(
    [Parameter(Mandatory = $true)][string]$Password,   # hMailServer's administrator password
    [string]$Out = "hmailserver-export.json"
)
$ErrorActionPreference = "Stop"

$app = New-Object -ComObject hMailServer.Application
if (-not $app.Authenticate("Administrator", $Password)) { throw "hMailServer refused the administrator password" }

function Iso($value) { if ($null -eq $value -or $value -eq "") { return $null } ([datetime]$value).ToString("s") }
function Bit($value) { if ($value) { 1 } else { 0 } }

$tables = [ordered]@{
    hm_settings = @(); hm_tcpipports = @(); hm_domains = @(); hm_domain_aliases = @(); hm_accounts = @()
    hm_aliases = @(); hm_distributionlists = @(); hm_distributionlistsrecipients = @(); hm_imapfolders = @()
    hm_messages = @(); hm_rules = @(); hm_securityranges = @(); hm_surblservers = @()
}
$settings = $app.Settings
$tables.hm_settings += [ordered]@{ settingname = "hostname"; settingstring = $settings.HostName; settinginteger = 0 }
$tables.hm_settings += [ordered]@{ settingname = "usegreylisting"; settingstring = ""; settinginteger = (Bit $settings.AntiSpam.GreyListingEnabled) }
$tables.hm_settings += [ordered]@{ settingname = "scriptingenabled"; settingstring = ""; settinginteger = (Bit $settings.Scripting.Enabled) }

for ($i = 0; $i -lt $settings.TCPIPPorts.Count; $i++) {
    $port = $settings.TCPIPPorts.Item($i)
    $address = 0
    if ($port.Address -and $port.Address -ne "0.0.0.0") {
        $bytes = [System.Net.IPAddress]::Parse($port.Address).GetAddressBytes()
        $address = [int64]$bytes[0] * 16777216 + [int64]$bytes[1] * 65536 + [int64]$bytes[2] * 256 + [int64]$bytes[3]
    }
    $tables.hm_tcpipports += [ordered]@{
        portid = $port.ID; portprotocol = $port.Protocol; portnumber = $port.PortNumber
        portaddress1 = $address; portconnectionsecurity = $port.ConnectionSecurity
    }
}
for ($i = 0; $i -lt $settings.SecurityRanges.Count; $i++) {
    $tables.hm_securityranges += [ordered]@{ rangename = $settings.SecurityRanges.Item($i).Name }
}
for ($i = 0; $i -lt $settings.AntiSpam.SURBLServers.Count; $i++) {
    $tables.hm_surblservers += [ordered]@{ surblhost = $settings.AntiSpam.SURBLServers.Item($i).DNSHost }
}
for ($i = 0; $i -lt $app.Rules.Count; $i++) {
    $tables.hm_rules += [ordered]@{ ruleaccountid = 0; rulename = $app.Rules.Item($i).Name }
}

function Add-Folders($account, $folders, $parentId) {
    for ($f = 0; $f -lt $folders.Count; $f++) {
        $folder = $folders.Item($f)
        $tables.hm_imapfolders += [ordered]@{
            folderid = $folder.ID; folderaccountid = $account.ID; folderparentid = $parentId
            foldername = $folder.Name; folderissubscribed = (Bit $folder.Subscribed)
        }
        for ($m = 0; $m -lt $folder.Messages.Count; $m++) {
            $message = $folder.Messages.Item($m)
            $flags = 0
            if ($message.Flag(1)) { $flags += 1 }    # seen
            if ($message.Flag(2)) { $flags += 2 }    # deleted
            if ($message.Flag(4)) { $flags += 4 }    # flagged
            if ($message.Flag(8)) { $flags += 8 }    # answered
            if ($message.Flag(16)) { $flags += 16 }  # draft
            $script:tables.hm_messages += [ordered]@{
                messageid = $message.ID; messageaccountid = $account.ID; messagefolderid = $folder.ID
                messagefilename = [System.IO.Path]::GetFileName($message.Filename); messageflags = $flags
                messagecreatetime = (Iso $message.InternalDate); messageuid = $message.UID; messagesize = $message.Size
            }
        }
        Add-Folders $account $folder.SubFolders $folder.ID
    }
}

for ($d = 0; $d -lt $app.Domains.Count; $d++) {
    $domain = $app.Domains.Item($d)
    $tables.hm_domains += [ordered]@{
        domainid = $domain.ID; domainname = $domain.Name; domainactive = (Bit $domain.Active)
        domainpostmaster = $domain.Postmaster; domainmaxmessagesize = $domain.MaxMessageSize
    }
    for ($a = 0; $a -lt $domain.DomainAliases.Count; $a++) {
        $tables.hm_domain_aliases += [ordered]@{ dadomainid = $domain.ID; daalias = $domain.DomainAliases.Item($a).AliasName }
    }
    for ($a = 0; $a -lt $domain.Accounts.Count; $a++) {
        $account = $domain.Accounts.Item($a)
        $tables.hm_accounts += [ordered]@{
            accountid = $account.ID; accountdomainid = $domain.ID; accountaddress = $account.Address
            accountpassword = $account.Password; accountpwencryption = $account.PasswordEncryption
            accountactive = (Bit $account.Active); accountisad = (Bit $account.IsAD)
            accountaddomain = $account.ADDomain; accountadusername = $account.ADUsername
            accountmaxsize = $account.MaxSize
            accountforwardenabled = (Bit $account.ForwardEnabled); accountforwardaddress = $account.ForwardAddress
            accountforwardkeeporiginal = (Bit $account.ForwardKeepOriginal)
            accountvacationmessageon = (Bit $account.VacationMessageIsOn)
            accountvacationsubject = $account.VacationSubject; accountvacationmessage = $account.VacationMessage
            accountpersonfirstname = $account.PersonFirstName; accountpersonlastname = $account.PersonLastName
        }
        for ($r = 0; $r -lt $account.Rules.Count; $r++) {
            $tables.hm_rules += [ordered]@{ ruleaccountid = $account.ID; rulename = $account.Rules.Item($r).Name }
        }
        Add-Folders $account $account.IMAPFolders -1
    }
    for ($a = 0; $a -lt $domain.Aliases.Count; $a++) {
        $alias = $domain.Aliases.Item($a)
        $tables.hm_aliases += [ordered]@{
            aliasdomainid = $domain.ID; aliasname = $alias.Name; aliasvalue = $alias.Value; aliasactive = (Bit $alias.Active)
        }
    }
    for ($l = 0; $l -lt $domain.DistributionLists.Count; $l++) {
        $list = $domain.DistributionLists.Item($l)
        $tables.hm_distributionlists += [ordered]@{
            distributionlistid = $list.ID; distributionlistdomainid = $domain.ID; distributionlistaddress = $list.Address
            distributionlistenabled = (Bit $list.Active); distributionlistrequireauth = (Bit $list.RequireSMTPAuth)
            distributionlistmode = $list.Mode
        }
        for ($r = 0; $r -lt $list.Recipients.Count; $r++) {
            $tables.hm_distributionlistsrecipients += [ordered]@{
                distributionlistrecipientlistid = $list.ID
                distributionlistrecipientaddress = $list.Recipients.Item($r).RecipientAddress
            }
        }
    }
}

$export = [ordered]@{ format = "hmailserver-tables"; version = 1; tables = $tables }
$export | ConvertTo-Json -Depth 6 -Compress | Set-Content -Path $Out -Encoding UTF8
Write-Host "wrote $Out"
