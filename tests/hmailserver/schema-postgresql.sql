-- hMailServer's tables (PostgreSQL flavour), as far as `appliance import hmailserver` reads them:
-- tests/hmailserver/schema.sql in the types of hMailServer's PostgreSQL layout, which has the same
-- table and column names (bigserial keys, smallint flags, timestamp without time zone for its
-- local-time dates). Our own file; statements end with ";" at a line end.
CREATE TABLE hm_settings (
  settingid bigserial PRIMARY KEY,
  settingname varchar(30) NOT NULL DEFAULT '',
  settingstring varchar(4000) NOT NULL DEFAULT '',
  settinginteger int NOT NULL DEFAULT 0,
  CONSTRAINT settingname_unique UNIQUE (settingname)
);
CREATE TABLE hm_tcpipports (
  portid bigserial PRIMARY KEY,
  portprotocol smallint NOT NULL,
  portnumber int NOT NULL,
  portaddress1 bigint NOT NULL DEFAULT 0,
  portaddress2 bigint NOT NULL DEFAULT 0,
  portconnectionsecurity smallint NOT NULL DEFAULT 0,
  portsslcertificateid bigint NOT NULL DEFAULT 0
);
CREATE TABLE hm_domains (
  domainid bigserial PRIMARY KEY,
  domainname varchar(80) NOT NULL DEFAULT '',
  domainactive smallint NOT NULL DEFAULT 1,
  domainpostmaster varchar(80) NOT NULL DEFAULT '',
  domainmaxsize int NOT NULL DEFAULT 0,
  domainaddomain varchar(255) NOT NULL DEFAULT '',
  domainmaxmessagesize int NOT NULL DEFAULT 0,
  domainuseplusaddressing smallint NOT NULL DEFAULT 0,
  domainplusaddressingchar varchar(1) NOT NULL DEFAULT '',
  domainantispamoptions int NOT NULL DEFAULT 0,
  domainenablesignature smallint NOT NULL DEFAULT 0,
  domainsignaturemethod smallint NOT NULL DEFAULT 0,
  domainsignatureplaintext text,
  domainsignaturehtml text,
  domainaddsignaturestoreplies smallint NOT NULL DEFAULT 0,
  domainaddsignaturestolocalemail smallint NOT NULL DEFAULT 0,
  domainmaxnoofaccounts int NOT NULL DEFAULT 0,
  domainmaxnoofaliases int NOT NULL DEFAULT 0,
  domainmaxnoofdistributionlists int NOT NULL DEFAULT 0,
  domainlimitationsenabled int NOT NULL DEFAULT 0,
  domainmaxaccountsize int NOT NULL DEFAULT 0,
  domaindkimselector varchar(255) NOT NULL DEFAULT '',
  domaindkimprivatekeyfile varchar(255) NOT NULL DEFAULT '',
  CONSTRAINT domainname_unique UNIQUE (domainname)
);
CREATE TABLE hm_domain_aliases (
  daid bigserial PRIMARY KEY,
  dadomainid int NOT NULL,
  daalias varchar(255) NOT NULL
);
CREATE TABLE hm_accounts (
  accountid bigserial PRIMARY KEY,
  accountdomainid int NOT NULL,
  accountadminlevel smallint NOT NULL DEFAULT 0,
  accountaddress varchar(255) NOT NULL,
  accountpassword varchar(255) NOT NULL DEFAULT '',
  accountactive smallint NOT NULL DEFAULT 1,
  accountisad smallint NOT NULL DEFAULT 0,
  accountaddomain varchar(255) NOT NULL DEFAULT '',
  accountadusername varchar(255) NOT NULL DEFAULT '',
  accountmaxsize int NOT NULL DEFAULT 0,
  accountvacationmessageon smallint NOT NULL DEFAULT 0,
  accountvacationmessage text,
  accountvacationsubject varchar(200) NOT NULL DEFAULT '',
  accountpwencryption smallint NOT NULL DEFAULT 0,
  accountforwardenabled smallint NOT NULL DEFAULT 0,
  accountforwardaddress varchar(255) NOT NULL DEFAULT '',
  accountforwardkeeporiginal smallint NOT NULL DEFAULT 0,
  accountenablesignature smallint NOT NULL DEFAULT 0,
  accountsignatureplaintext text,
  accountsignaturehtml text,
  accountlastlogontime timestamp NULL,
  accountvacationexpires smallint NOT NULL DEFAULT 0,
  accountvacationexpiredate timestamp NULL,
  accountpersonfirstname varchar(60) NOT NULL DEFAULT '',
  accountpersonlastname varchar(60) NOT NULL DEFAULT '',
  CONSTRAINT accountaddress_unique UNIQUE (accountaddress)
);
CREATE TABLE hm_aliases (
  aliasid bigserial PRIMARY KEY,
  aliasdomainid int NOT NULL,
  aliasname varchar(255) NOT NULL,
  aliasvalue varchar(255) NOT NULL,
  aliasactive smallint NOT NULL DEFAULT 1
);
CREATE TABLE hm_distributionlists (
  distributionlistid bigserial PRIMARY KEY,
  distributionlistdomainid int NOT NULL,
  distributionlistaddress varchar(255) NOT NULL,
  distributionlistenabled smallint NOT NULL DEFAULT 1,
  distributionlistrequireauth smallint NOT NULL DEFAULT 0,
  distributionlistrequireaddress varchar(255) NOT NULL DEFAULT '',
  distributionlistmode smallint NOT NULL DEFAULT 0
);
CREATE TABLE hm_distributionlistsrecipients (
  distributionlistrecipientid bigserial PRIMARY KEY,
  distributionlistrecipientlistid int NOT NULL,
  distributionlistrecipientaddress varchar(255) NOT NULL
);
CREATE TABLE hm_imapfolders (
  folderid bigserial PRIMARY KEY,
  folderaccountid int NOT NULL,
  folderparentid int NOT NULL DEFAULT -1,
  foldername varchar(255) NOT NULL,
  folderissubscribed smallint NOT NULL DEFAULT 1,
  foldercreationtime timestamp NOT NULL,
  foldercurrentuid bigint NOT NULL DEFAULT 0
);
CREATE TABLE hm_messages (
  messageid bigserial PRIMARY KEY,
  messageaccountid int NOT NULL,
  messagefolderid int NOT NULL DEFAULT 0,
  messagefilename varchar(255) NOT NULL,
  messagetype smallint NOT NULL,
  messagefrom varchar(255) NOT NULL DEFAULT '',
  messagesize bigint NOT NULL DEFAULT 0,
  messagecurnooftries int NOT NULL DEFAULT 0,
  messagenexttrytime timestamp NULL,
  messageflags smallint NOT NULL DEFAULT 0,
  messagecreatetime timestamp NOT NULL,
  messagelocked smallint NOT NULL DEFAULT 0,
  messageuid bigint NOT NULL DEFAULT 0
);
CREATE TABLE hm_rules (
  ruleid bigserial PRIMARY KEY,
  ruleaccountid int NOT NULL DEFAULT 0,
  rulename varchar(100) NOT NULL,
  ruleactive smallint NOT NULL DEFAULT 1,
  ruleuseand smallint NOT NULL DEFAULT 1,
  rulesortorder int NOT NULL DEFAULT 0
);
CREATE TABLE hm_securityranges (
  rangeid bigserial PRIMARY KEY,
  rangepriorityid int NOT NULL DEFAULT 0,
  rangelowerip1 bigint NOT NULL DEFAULT 0,
  rangeupperip1 bigint NOT NULL DEFAULT 0,
  rangeoptions int NOT NULL DEFAULT 0,
  rangename varchar(100) NOT NULL
);
CREATE TABLE hm_surblservers (
  surblid bigserial PRIMARY KEY,
  surblactive smallint NOT NULL DEFAULT 1,
  surblhost varchar(255) NOT NULL,
  surblrejectmessage varchar(255) NOT NULL DEFAULT '',
  surblscore int NOT NULL DEFAULT 0
);
